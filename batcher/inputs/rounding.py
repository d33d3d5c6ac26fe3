"""Spreadsheet-rounded ids: a column whose ids show Excel's 15 significant digits.

Excel stores a number as a double and shows 15 significant digits, so a 19-digit id typed or
opened into a Number cell is saved with its last 4 digits zeroed: ``1990117000000120345``
becomes ``1990117000000120000``, usually another real record. One such id cannot be told from
a genuine id ending in zeros; a column can. For a genuine id of ``L`` digits the chance that its
last ``L - 15`` digits are all 0 is ``10**-(L - 15)`` (1 in 10,000 for 19 digits), so over a
column's distinct ids the count of such zero-tailed ids follows (closely) a Poisson law of mean
``μ = Σ 10**-(L - 15)``. The column is judged rounded when the count ``k`` is one chance gives
less often than:

- 1 in 1,000, when at least half of the column's ids longer than 15 digits are zero-tailed
  (the column looks rounded wholesale: a lone 19-digit id ending in ``0000`` is flagged);
- 1 in 10⁶ otherwise (a few rounded rows pasted among many genuine ones).

Below that, a count chance gives less than once in a hundred is said as a warning (the ids are
kept: they may be genuine).

In a column judged rounded, every zero-tailed id is refused (``ROUNDED_ID``): which of them are
genuine cannot be known. A genuine column is flagged at most once in 1,000 files even in the
worst case (a file of one 19-digit id ending in 0000), and a large file of genuine ids — say a
million, one in a thousand ending in ``000`` — about once in a million files.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

ROUNDED_ID = "ROUNDED_ID"
EXPORT_AS_TEXT = ("export the ids as text (format the id columns as Text before pasting, or "
                  "save from the CRM's export without opening it in Excel) and run these rows "
                  "again")
SIGNIFICANT = 15  # digits Excel keeps
_WHOLESALE_ALPHA = 1e-3
_MIXED_ALPHA = 1e-6
_UNUSUAL = 1e-2
#: 10**d as uint64, d = 0..19
_POW10 = np.array([10 ** d for d in range(20)], dtype=np.uint64)


def zero_tailed(ids: np.ndarray) -> np.ndarray:
    """uint64 ids → True where the id has more than 15 digits, all 0 past the 15th."""
    out = np.zeros(len(ids), dtype=bool)
    maybe = np.flatnonzero((ids >= _POW10[SIGNIFICANT]) & (ids % np.uint64(10) == 0))
    if len(maybe):
        v = ids[maybe]
        out[maybe] = v % _POW10[_digits(v) - SIGNIFICANT] == 0
    return out


def _digits(ids: np.ndarray) -> np.ndarray:
    """Number of decimal digits of each (non-zero) uint64."""
    return np.searchsorted(_POW10, ids, side="right")


def rounded_ids(distinct: np.ndarray) -> np.ndarray | None:
    """The distinct uint64 ids of one column → the ids to refuse as possibly rounded (sorted),
    or None when the column shows no rounding. Ids of invalid rows (0) are ignored."""
    refused, _ = rounding_evidence(distinct)
    return refused


def rounding_evidence(distinct: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(ids to refuse, ids to warn of), each sorted or None: the zero-tailed ids of a column
    whose count is past the rule's thresholds (refused), or only unusual (a warning)."""
    tailed = zero_tailed(distinct)
    k = int(np.count_nonzero(tailed))
    if not k:
        return None, None
    # ids of at least 16, 17, … 20 digits: counts by length, not a length per id (a column of
    # ten million distinct ids is read five times instead of sorted into lengths)
    at_least = [int(np.count_nonzero(distinct >= p)) for p in _POW10[SIGNIFICANT:]] + [0]
    mean = sum((n - more) * 10.0 ** -extra
               for extra, (n, more) in enumerate(itertools.pairwise(at_least), 1))
    alpha = _WHOLESALE_ALPHA if 2 * k >= at_least[0] else _MIXED_ALPHA
    chance = poisson_at_least(k, mean)
    if chance < alpha:
        return np.sort(distinct[tailed]), None
    return None, np.sort(distinct[tailed]) if chance < _UNUSUAL else None


def poisson_at_least(k: int, mean: float) -> float:
    """P(X ≥ k) for X ~ Poisson(mean), summed from the k-th term (no cancellation)."""
    if k <= 0:
        return 1.0
    if k <= mean:
        return 1.0  # not evidence of anything: at most the median
    term = math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1)) if mean > 0 else 0.0
    total, i = 0.0, k
    while term > total * 1e-16 and term > 0:
        total += term
        i += 1
        term *= mean / i
    return min(total, 1.0)


def among(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``values`` in the sorted ``ids`` (a binary search: no hash table of either side)."""
    if not len(ids):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
    return ids[at] == values
