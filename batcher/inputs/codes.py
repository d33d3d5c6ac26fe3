"""Integer codes for ids and pairs over tens of millions of rows: hashing, grouping, repeats.

Ids arrive as uint64 (a canonical id maps one-to-one onto one); everything here is numpy and
Arrow kernels, most of it on two threads (the kernels release the GIL)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..arrays import arrow_of, both, numpy_of
from .rounding import among


def concat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def common_dictionary(index: list[np.ndarray], values: list[np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Chunks' (index per row into the chunk's values) → (index per row into distinct values,
    the distinct values): only the few values are hashed, never a value per row."""
    codes, uniques = _encode(concat(values))
    if len(index) == 1 and np.array_equal(codes, np.arange(len(codes))):
        return index[0], uniques  # one chunk of distinct values: its index already is one
    bounds = np.cumsum([0] + [len(v) for v in values])
    return concat([take(codes[lo:hi], ix) for ix, lo, hi in zip(index, bounds[:-1], bounds[1:],
                                                             strict=True)]), uniques


def _encode(values: np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance, and the value of each code (Arrow's hash table is
    the fastest at hand for tens of millions of uint64)."""
    enc = pc.dictionary_encode(values if isinstance(values, pa.Array)
                               else arrow_of(values, pa.uint64()))
    return numpy_of(enc.indices), numpy_of(enc.dictionary)


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


def take(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` by Arrow: it takes int32 indices as they are (numpy converts them
    to a copy in intp first) and reuses its own memory."""
    return numpy_of(pc.take(arrow_of(table), arrow_of(index)))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: top bits split ids evenly


HALVES_MIN = 1 << 20  # fewer values are hashed in one go


#: 256 parts: a part of ten million distinct ids (40,000 a part) keeps its hash table in a
#: core's 2 MB cache (with 64 parts the table of 150,000 missed it and was regrown more often)
_PART_BITS = 8


def encode_parts(values: np.ndarray, pool: ThreadPoolExecutor
                  ) -> tuple[np.ndarray, np.ndarray, _Grouping | None]:
    """``_encode`` of many ids, on two threads and cache-sized hash tables; also how the rows
    were grouped (None when there were few enough to hash in one go).

    One table for millions of ids misses the cache on nearly every probe and is regrown
    several times. Instead ids are split by hash into 256 parts, each holding its own
    distinct values, and each part is hashed alone: each half of the rows is partitioned
    (a counting sort of one byte), then each half of the parts is hashed, then each half of the
    rows gets its codes back. Codes are numbered part by part."""
    if len(values) < HALVES_MIN:
        return (*_encode(values), None)
    n_parts, mid = 1 << _PART_BITS, len(values) // 2
    halves = [(0, mid), (mid, len(values))]
    parted = both(lambda lo, hi: _partition(values[lo:hi], n_parts), halves, pool)
    local = [np.empty(hi - lo, dtype=np.int32) for lo, hi in halves]
    uniques: list[np.ndarray] = [np.zeros(0, np.uint64)] * n_parts

    def encode(first: int, last: int) -> None:
        for p in range(first, last):
            # Arrow drops empty chunks (a part can be empty in a half, or in both when the
            # ids are few): only the halves with rows in this part get codes back
            held = [h for h, (_, b, _) in enumerate(parted) if b[p + 1] > b[p]]
            enc = pc.dictionary_encode(pa.chunked_array(
                [parted[h][2].slice(parted[h][1][p], parted[h][1][p + 1] - parted[h][1][p])
                 for h in held], pa.uint64()))
            for h, chunk in zip(held, enc.chunks, strict=True):
                b = parted[h][1]
                local[h][b[p]:b[p + 1]] = numpy_of(chunk.indices)
            if held:
                uniques[p] = numpy_of(enc.chunk(0).dictionary)

    both(encode, [(0, n_parts // 2), (n_parts // 2, n_parts)], pool)
    grouping = _Grouping(halves, [order for order, _, _ in parted], [b for _, b, _ in parted],
                         local, np.cumsum([0] + [len(u) for u in uniques]))
    return grouping.codes(pool), np.concatenate(uniques), grouping


@dataclass(frozen=True)
class _Grouping:
    """Rows grouped by hash part, per half of the rows: positions in order of part (``order``),
    where each part starts in that order (``bounds``), and each row's code within its part
    (``local``) in that order; a part's codes start at ``offsets[part]``."""

    halves: list[tuple[int, int]]
    order: list[np.ndarray]
    bounds: list[np.ndarray]
    local: list[np.ndarray]
    offsets: np.ndarray

    def codes(self, pool: ThreadPoolExecutor) -> np.ndarray:
        """The code of each row, in row order."""
        codes = np.empty(self.halves[-1][1], dtype=np.intp)  # what bincount and indexing take

        def scatter(half: int) -> None:
            lo, hi = self.halves[half]
            out, order, b = codes[lo:hi], self.order[half], self.bounds[half]
            for p in range(len(self.offsets) - 1):
                out[order[b[p]:b[p + 1]]] = self.local[half][b[p]:b[p + 1]] + self.offsets[p]

        both(scatter, [(0,), (1,)], pool)
        return codes

    def summer(self, c: np.ndarray, pool: ThreadPoolExecutor
               ) -> Callable[[np.ndarray], np.ndarray]:
        """Σ ``table[c]`` per code, for any table: summed part by part, where the sums of a
        part stay in cache, not by one pass over the rows scattering into millions of bins."""
        in_order = both(lambda h: c[slice(*self.halves[h])][self.order[h]], [(0,), (1,)], pool)
        n_parts = len(self.offsets) - 1

        def sums(table: np.ndarray) -> np.ndarray:
            out = np.zeros(int(self.offsets[-1]))
            weights = [take(table, c_half) for c_half in in_order]

            def run(first: int, last: int) -> None:
                for p in range(first, last):
                    lo, hi = self.offsets[p], self.offsets[p + 1]
                    for b, local, w in zip(self.bounds, self.local, weights, strict=True):
                        out[lo:hi] += np.bincount(local[b[p]:b[p + 1]],
                                                  weights=w[b[p]:b[p + 1]], minlength=hi - lo)

            both(run, [(0, n_parts // 2), (n_parts // 2, n_parts)], pool)
            return out

        return sums


def _partition(values: np.ndarray, n_parts: int) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(positions in order of part, start of each part in that order, the values in it)."""
    part = np.empty(len(values), dtype=np.uint8)
    shift = np.uint64(64 - _PART_BITS)
    for lo in range(0, len(values), HALVES_MIN):  # in slices: no product of every value at once
        np.right_shift(values[lo:lo + HALVES_MIN] * _GOLDEN, shift,
                       out=part[lo:lo + HALVES_MIN], casting="unsafe")
    order = numpy_of(pc.array_sort_indices(arrow_of(part))).view(np.intp)  # counting sort
    bounds = np.zeros(n_parts + 1, dtype=np.int64)
    np.cumsum(np.bincount(part, minlength=n_parts), out=bounds[1:])
    return order, bounds, arrow_of(values).take(arrow_of(order))


_SUM_BITS = 45  # float64 sums of < 512 powers of two below 2**45 stay exact (< 2**53)


def masks_and_repeats(rc: np.ndarray, cc: np.ndarray, n_rec: int, n_cad: int,
                       sums: Callable[[np.ndarray], np.ndarray] | None = None
                       ) -> tuple[np.ndarray | None, Repeats | None]:
    """(per record, the OR of ``1 << cadence`` of its pairs when there are at most 64 cadences,
    else None; the positions that repeat an earlier pair — None when no pair repeats).
    ``rc``: dense record codes, each of 0..n_rec-1 held by a row (as the reader's hashing makes
    them), so ``n_rec == len(rc)`` means each record holds one pair.

    Per record, Σ 2**cadence has as many one-bits as the record has pairs exactly when no pair
    repeats (a repeat carries), so one weighted bincount per 45 cadences finds the records that
    may hold a repeat; only their rows are sorted, and the repeats' powers taken out of the sums
    again. When the one-bits of all records add up to the number of pairs, no record holds
    one, and the pairs are not even counted. ``sums`` maps a table of one weight per cadence to
    its sum per record (default: one bincount)."""
    if n_rec == len(rc):  # each record holds one pair (a list out of one cadence): none repeats
        if n_cad > 64:
            return None, None
        masks = np.zeros(n_rec, dtype=np.uint64)
        masks[rc] = np.left_shift(np.uint64(1), cc.astype(np.uint64))
        return masks, None
    if n_cad > 8 * _SUM_BITS:  # too many passes: sort every pair
        return None, _repeats_among(np.arange(len(rc)), rc, cc, n_rec)
    grouped = sums
    sums = sums or (lambda table: _sums(rc, cc, table, n_rec))
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
    # sums are exact below 512 pairs a record (2**9 * 2**44); a record with more pairs has
    # fewer one-bits (at most 53) than pairs anyway: comparing with the count finds them
    counts = (np.bincount(rc, minlength=n_rec) if grouped is None  # grouped: cache-sized sums
              else grouped(np.ones(n_cad)).astype(np.int64))
    rows = np.flatnonzero((ones != counts)[rc])
    dup = _repeats_among(rows, rc, cc, n_rec)
    if not lanes or dup is None:
        return _or_lanes(lanes, n_rec), dup
    for _, powers, bits in lanes:  # each repeat added its pair's power once more: take it out
        bits -= _as_bits(np.bincount(rc[dup.at], weights=powers[cc[dup.at]], minlength=n_rec))
    masks = _or_lanes(lanes, n_rec)
    inexact = counts >= _EXACT_PAIRS
    if inexact.any():  # sums of that many powers were rounded: these records' masks pair by pair
        rows = rows[inexact[rc[rows]]]
        first = rows[~among(rows, dup.at)]
        masks[inexact] = 0
        np.bitwise_or.at(masks, rc[first], np.uint64(1) << cc[first].astype(np.uint64))
    return masks, dup


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

    The pair and the index in ``sub`` packed in one uint64 and sorted as plain values (numpy's
    vectorised sort: several times faster than hashing or an argsort): equal pairs come
    together, the earliest first. Keys too wide to pack are hashed instead."""
    if not len(sub):
        return None
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


def _repeats_hashed(sub: np.ndarray, pair: np.ndarray) -> Repeats | None:
    """``_repeats_among`` by a hash table, for pairs whose key leaves no room for an index."""
    code, uniques = _encode(pair)
    if len(uniques) == len(sub):
        return None
    earlier = sub[first_of_code(code, len(uniques))[code]]
    repeat = earlier != sub
    return Repeats(sub[repeat], earlier[repeat])
