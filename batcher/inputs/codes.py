"""The reader's codes over tens of millions of rows: cadence codes per module, each record's
cadence set, and the rows that repeat a pair (the ids' own hashing: :mod:`batcher.hashing`).

Ids arrive as uint64 (a canonical id maps one-to-one onto one); everything here is numpy and
Arrow kernels, most of it on two threads (the kernels release the GIL)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from ..arrays import arrow_of, numpy_of
from ..hashing import ByCode, concat, encode, take
from .rounding import among


def common_dictionary(index: list[np.ndarray], values: list[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Chunks' (index per row into the chunk's values) → (index per row into distinct values,
    the distinct values): only the few values are hashed, never a value per row."""
    codes, uniques = encode(concat(values))
    if len(index) == 1 and np.array_equal(codes, np.arange(len(codes))):
        return index[0], uniques  # one chunk of distinct values: its index already is one
    bounds = np.cumsum([0] + [len(v) for v in values])
    return concat([take(codes[lo:hi], ix) for ix, lo, hi in zip(index, bounds[:-1], bounds[1:],
                                                             strict=True)]), uniques


def first_of_code(codes: np.ndarray, n_codes: int, n_present: int | None = None
                   ) -> np.ndarray:
    """Position of the first occurrence of each code (``len(codes)`` for absent codes).

    Looks at a growing prefix: when codes are few, they all show up early (once the
    ``n_present`` codes known to occur have, the rest is not looked at)."""
    first = np.full(n_codes, len(codes), dtype=np.int64)
    start, width = 0, 1 << 16
    missing = n_codes if n_present is None else n_present
    if n_codes > len(codes) >> 8:  # many codes: one pass over all of them
        width = len(codes)
    while missing and start < len(codes):
        seg = codes[start:start + width]
        here = np.full(n_codes, len(seg), dtype=np.int64)
        here[seg[::-1]] = np.arange(len(seg) - 1, -1, -1)  # the last write wins: the earliest
        new = (first == len(codes)) & (here < len(seg))
        first[new] = here[new] + start
        missing -= int(np.count_nonzero(new))
        start += width
        width *= 4
    return first


def cadence_codes(cad: np.ndarray, n_values: int, mod: np.ndarray, n_mod: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(cadence code of each row, module * n_values + value of each code).

    A cadence under two modules is two cadences: codes are numbered module by module, and
    within a module in order of the value's first row, found on a small table of
    (module, value) keys rather than by hashing a key per row."""
    key = cad
    if n_mod > 1:
        key = mod.astype(np.int64 if n_mod * n_values >= 1 << 31 else np.int32)
        key *= n_values
        key += cad
    present = np.sort(numpy_of(pc.unique(arrow_of(key))))  # no intp copy of the keys
    values = np.sort(present % n_values)  # numpy's hashed unique is slow on millions
    n_present = min(len(values), 1) + int(np.count_nonzero(values[1:] != values[:-1]))
    first = first_of_code(cad, n_values, n_present)
    used = present[np.lexsort((first[present % n_values], present // n_values))]
    code = np.zeros(n_mod * n_values, dtype=np.int32)
    code[used] = np.arange(len(used), dtype=np.int32)
    return take(code, key), used


_ONE_BIT = np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))  # 1 << cadence
_SUM_BITS = 45  # float64 sums of < 512 powers of two below 2**45 stay exact (< 2**53)


def masks_and_repeats(rc: np.ndarray, cc: np.ndarray, n_rec: int, n_cad: int,
                       by_code: ByCode | None = None
                       ) -> tuple[np.ndarray | None, Repeats | None]:
    """(per record, the OR of ``1 << cadence`` of its pairs when there are at most 64 cadences,
    else None; the positions that repeat an earlier pair — None when no pair repeats).
    ``rc``: dense record codes, each of 0..n_rec-1 held by a row (as the reader's hashing makes
    them), so ``n_rec == len(rc)`` means each record holds one pair.

    Per record, Σ 2**cadence has as many one-bits as the record has pairs exactly when no pair
    repeats (a repeat carries): when the one-bits of all records add up to the number of pairs,
    no pair repeats. Else the repeats are found, and their powers taken out of the sums again.
    ``by_code``: the cadences as the records' hashing grouped them, when it did (many rows):
    sums and repeats are then worked out part by part of the records, in cache; without it, one
    weighted bincount per 45 cadences, and the rows of the records that may hold a repeat (one-
    bits short of their pairs) looked at again."""
    if n_rec == len(rc):  # each record holds one pair (a list out of one cadence): none repeats
        if n_cad > 64:
            return None, None
        masks = np.empty(n_rec, dtype=np.uint64)
        masks[rc] = take(_ONE_BIT[:n_cad], cc)  # every record is written once
        return masks, None
    if n_cad > 64:  # no masks to make: the repeats alone
        found = by_code.repeats(n_cad) if by_code is not None else None
        if found is not None:
            return None, _repeats_of(*found)
        if n_cad > 8 * _SUM_BITS:  # too many passes: every pair looked at
            return None, _repeats_among(np.arange(len(rc)), rc, cc, n_rec)
    sums = by_code.sums if by_code is not None else (lambda table: _sums(rc, cc, table, n_rec))
    lanes: list[tuple[int, np.ndarray, np.ndarray]] = []  # (first cadence, weights, sums)
    ones = np.zeros(n_rec, dtype=np.int64)
    for lo in range(0, n_cad, _SUM_BITS):
        powers = np.zeros(n_cad)  # this pass's cadences weigh a power of two, the others 0
        powers[lo:lo + _SUM_BITS] = np.ldexp(1.0, np.arange(min(n_cad, lo + _SUM_BITS) - lo))
        bits = _as_bits(sums(powers))
        ones += np.bitwise_count(bits)
        if n_cad <= 64:
            lanes.append((lo, powers, bits))
    if int(ones.sum()) == len(rc):  # no record holds a repeat
        return _or_lanes(lanes, n_rec), None
    found = by_code.repeats(n_cad) if by_code is not None else None
    if found is not None:
        dup = _repeats_of(*found)
    else:
        # sums are exact below 512 pairs a record (2**9 * 2**44); a record with more pairs has
        # fewer one-bits (at most 53) than pairs anyway: comparing with the count finds them
        held = (ones != np.bincount(rc, minlength=n_rec))[rc]
        dup = _repeats_among(np.flatnonzero(held), rc, cc, n_rec)
    if not lanes or dup is None:
        return _or_lanes(lanes, n_rec), dup
    r_at, c_at = rc[dup.at], cc[dup.at]
    for _, powers, bits in lanes:  # each repeat added its pair's power once more: take it out
        np.subtract.at(bits, r_at, powers.astype(np.uint64)[c_at])  # a few rows: no n_rec pass
    masks = _or_lanes(lanes, n_rec)
    # sums of _EXACT_PAIRS powers or more were rounded: such a record (n_cad pairs at most, the
    # rest repeats) has its mask made pair by pair
    held = pc.value_counts(arrow_of(r_at))
    many = numpy_of(held.field("values"))[numpy_of(held.field("counts")) >= _EXACT_PAIRS - n_cad]
    if len(many):
        inexact = np.zeros(n_rec, dtype=bool)
        inexact[many] = True
        rows = np.flatnonzero(inexact[rc])
        first = rows[~among(rows, dup.at)]
        masks[inexact] = 0
        np.bitwise_or.at(masks, rc[first], np.uint64(1) << cc[first].astype(np.uint64))
    return masks, dup


def _repeats_of(at: np.ndarray, earlier: np.ndarray) -> Repeats | None:
    return Repeats(at, earlier) if len(at) else None


_EXACT_PAIRS = 1 << (53 - (_SUM_BITS - 1))  # float64 sums of fewer powers below 2**45 are exact


def _as_bits(sums: np.ndarray) -> np.ndarray:
    """Float sums of powers of two as uint64. A sum of a million repeats or more may pass
    2**64: its value is then garbage, never a warning (its record has far more pairs than
    one-bits, so it is found as holding repeats, and its mask made pair by pair)."""
    with np.errstate(invalid="ignore"):
        return sums.astype(np.uint64)


def _or_lanes(lanes: list[tuple[int, np.ndarray, np.ndarray]], n_rec: int) -> np.ndarray | None:
    """The masks from each lane's sums (None without lanes: more than 64 cadences)."""
    if not lanes:
        return None
    if len(lanes) == 1:  # the first lane's bits are the masks as they are
        return lanes[0][2]
    masks = np.zeros(n_rec, dtype=np.uint64)
    for lo, _, bits in lanes:
        masks |= bits << np.uint64(lo)
    return masks


def _sums(r: np.ndarray, c: np.ndarray, table: np.ndarray, n_rec: int) -> np.ndarray:
    """Σ ``table[c]`` per ``r``."""
    return np.bincount(r, weights=take(table, c), minlength=n_rec)


@dataclass(frozen=True)
class Repeats:
    """Positions that repeat an earlier pair (ascending), and the first position of that pair."""

    at: np.ndarray
    earlier: np.ndarray


def _repeats_among(sub: np.ndarray, rc: np.ndarray, cc: np.ndarray, n_rec: int
                   ) -> Repeats | None:
    """The positions of ``sub`` (ascending) that repeat an earlier pair among them.

    When a table of (record held by ``sub``, cadence) is not much bigger than ``sub`` (the rows
    of the records that hold a repeat: a few cadences each), each row finds the first row of
    its pair there: a scatter and a gather, twice as fast as sorting. Else by sorting."""
    if not len(sub):
        return None
    by_table = _repeats_by_table(sub, rc, cc, n_rec)
    return _repeats_sorted(sub, rc, cc, n_rec) if by_table is False else by_table


def _repeats_sorted(sub: np.ndarray, rc: np.ndarray, cc: np.ndarray, n_rec: int
                    ) -> Repeats | None:
    """``_repeats_among`` with the pair and the index in ``sub`` packed in one uint64 and
    sorted as plain values (numpy's vectorised sort: several times faster than hashing or an
    argsort): equal pairs come together, the earliest first. Keys too wide to pack are hashed
    instead."""
    pair = cc[sub].astype(np.uint64) * np.uint64(n_rec) + rc[sub].astype(np.uint64)
    index_bits = max(int(len(sub) - 1).bit_length(), 1)
    if int(pair.max()).bit_length() + index_bits > 64:
        return _repeats_hashed(sub, pair)
    packed = np.sort((pair << np.uint64(index_bits)) | np.arange(len(sub), dtype=np.uint64))
    key = packed >> np.uint64(index_bits)
    repeat = np.zeros(len(sub), dtype=bool)
    np.equal(key[1:], key[:-1], out=repeat[1:])
    if not repeat.any():
        return None
    index = (packed & np.uint64((1 << index_bits) - 1)).astype(np.int64)
    lead = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(sub))))  # group's first
    at, earlier = index[repeat], index[lead[repeat]]
    order = np.argsort(at)
    return Repeats(sub[at[order]], sub[earlier[order]])


#: the first-row table of ``_repeats_by_table`` holds at most this many entries a row of ``sub``
_TABLE_PER_ROW = 16


def _repeats_by_table(sub: np.ndarray, rc: np.ndarray, cc: np.ndarray, n_rec: int
                      ) -> Repeats | None | bool:
    """``_repeats_among`` by a table of first rows, one entry per (record, cadence) of the
    records ``sub`` holds; False when that table would be too big."""
    r, c = rc[sub], cc[sub]
    n_cad = int(c.max()) + 1
    held = np.zeros(n_rec, dtype=bool)
    held[r] = True
    number = np.cumsum(held, dtype=np.int64)  # 1 + the held records' own numbering
    n_keys = int(number[-1]) * n_cad
    if n_keys > _TABLE_PER_ROW * len(sub) + (1 << 20):
        return False
    key = take(number, r)
    key -= 1
    key *= n_cad
    key += c
    index = np.int32 if len(sub) < 1 << 31 else np.int64
    first = np.empty(n_keys, dtype=index)  # read only where written
    first[key[::-1]] = np.arange(len(sub) - 1, -1, -1, dtype=index)  # the last write wins
    earliest = take(first, key)
    at = np.flatnonzero(earliest != np.arange(len(sub), dtype=index))
    return Repeats(sub[at], sub[earliest[at]]) if len(at) else None


def _repeats_hashed(sub: np.ndarray, pair: np.ndarray) -> Repeats | None:
    """``_repeats_among`` by a hash table, for pairs whose key leaves no room for an index."""
    code, uniques = encode(pair)
    if len(uniques) == len(sub):
        return None
    earlier = sub[first_of_code(code, len(uniques))[code]]
    repeat = earlier != sub
    return Repeats(sub[repeat], earlier[repeat])
