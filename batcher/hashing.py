"""Integer codes for many uint64 values (ids, cadence sets): Arrow's hash table, and for
millions of values the same in cache-sized parts on two threads, with how the rows were
grouped — so that what a second column says per code (sums, repeated pairs) is worked out part
by part too (:class:`ByCode`). Everything here is numpy and Arrow kernels (which release the
GIL)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrays import arrow_of, both, numpy_of


def concat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def encode(values: np.ndarray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance, and the value of each code (Arrow's hash table is
    the fastest at hand for tens of millions of uint64)."""
    enc = pc.dictionary_encode(values if isinstance(values, pa.Array)
                               else arrow_of(values, pa.uint64()))
    return numpy_of(enc.indices), numpy_of(enc.dictionary)


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
    """:func:`encode` of many values (ids, cadence sets), on two threads and cache-sized hash
    tables; also how the rows were grouped (None when there were few enough to hash in one
    go).

    One table for millions of ids misses the cache on nearly every probe and is regrown
    several times. Instead ids are split by hash into 256 parts, each holding its own
    distinct values, and each part is hashed alone: each half of the rows is partitioned
    (a counting sort of one byte), then each half of the parts is hashed, then each half of the
    rows gets its codes back. Codes are numbered part by part."""
    if len(values) < HALVES_MIN:
        return (*encode(values), None)
    n_parts, mid = 1 << _PART_BITS, len(values) // 2
    halves = [(0, mid), (mid, len(values))]
    parted = both(lambda lo, hi: _partition(values[lo:hi], n_parts), halves, pool)
    local = [np.empty(hi - lo, dtype=np.int32) for lo, hi in halves]
    uniques: list[np.ndarray] = [np.zeros(0, np.uint64)] * n_parts

    def hash_parts(first: int, last: int) -> None:
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

    both(hash_parts, [(0, n_parts // 2), (n_parts // 2, n_parts)], pool)
    grouping = _Grouping(halves, [order for order, _, _ in parted], [b for _, b, _ in parted],
                         local, np.cumsum([0] + [len(u) for u in uniques]))
    return grouping.codes(pool), np.concatenate(uniques), grouping


#: values looked at to guess whether a column holds few distinct values
_SAMPLE = 1 << 14


def encode_many(values: np.ndarray, pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode` of many values on two threads, numbered in a deterministic order.

    A few thousand distinct values (guessed from a sample spread over the column: a quarter of
    it distinct or less) make a hash table that stays in cache: each half is hashed on its own
    thread and the second half's values are numbered after the first's. Many make one that
    does not: :func:`encode_parts`."""
    if len(values) < HALVES_MIN:
        return encode(values)
    if len(encode(values[::len(values) // _SAMPLE])[1]) * 4 > _SAMPLE:
        return encode_parts(values, pool)[:2]
    mid = len(values) // 2
    (first, seen), (second, more) = both(lambda lo, hi: encode(values[lo:hi]),
                                         [(0, mid), (mid, len(values))], pool)
    code_of, distinct = encode(np.concatenate([seen, more]))  # the first's keep their codes
    return np.concatenate([first, take(code_of[len(seen):], second)]), distinct


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

    def by_code(self, c: np.ndarray, pool: ThreadPoolExecutor) -> ByCode:
        """What a second column ``c`` (small integers: a cadence per row) says per code, worked
        out part by part; ``c`` taken in the rows' part order once, for every question."""
        return ByCode(self, both(lambda h: c[slice(*self.halves[h])][self.order[h]],
                                 [(0,), (1,)], pool), pool)


#: most entries of a part's first-row table (``ByCode.repeats``): 4M int32, 16 MB a thread
_FIRST_ROWS_MAX = 1 << 22


@dataclass(frozen=True)
class ByCode:
    """Per code, what the rows' values of a second column say (:meth:`_Grouping.by_code`): the
    work of a part stays in cache, instead of passes over the rows scattering into millions of
    bins. ``in_order``: per half, the column in the part order of the rows."""

    grouping: _Grouping
    in_order: list[np.ndarray]
    pool: ThreadPoolExecutor

    def _parts(self, run: Callable[[int, int], Any]) -> list[Any]:
        """``run(first part, last part)`` over each half of the parts, on two threads."""
        n_parts = len(self.grouping.offsets) - 1
        return both(run, [(0, n_parts // 2), (n_parts // 2, n_parts)], self.pool)

    def sums(self, table: np.ndarray) -> np.ndarray:
        """Σ ``table[c]`` per code, for any table (float64)."""
        g = self.grouping
        out = np.zeros(int(g.offsets[-1]))
        weights = [take(table, c_half) for c_half in self.in_order]

        def run(first: int, last: int) -> None:
            for p in range(first, last):
                lo, hi = g.offsets[p], g.offsets[p + 1]
                for b, local, w in zip(g.bounds, g.local, weights, strict=True):
                    out[lo:hi] += np.bincount(local[b[p]:b[p + 1]],
                                              weights=w[b[p]:b[p + 1]], minlength=hi - lo)

        self._parts(run)
        return out

    def repeats(self, n_c: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows whose (code, c) an earlier row has, ascending; the first row of each), found
        per part in a table of first rows that stays in cache (``c`` below ``n_c``); None when
        a part's table would pass ``_FIRST_ROWS_MAX`` entries."""
        g = self.grouping
        per_part = np.diff(g.offsets)
        if not len(per_part) or int(per_part.max()) * n_c > _FIRST_ROWS_MAX:
            return None

        def run(first: int, last: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
            table = np.empty(int(per_part[first:last].max(initial=0)) * n_c, dtype=np.int32)
            ats, firsts = [], []
            for p in range(first, last):
                # the part's rows in row order: each half's are (a stable sort), half by half
                spans = [(h, b[p], b[p + 1]) for h, b in enumerate(g.bounds) if b[p + 1] > b[p]]
                if not spans:
                    continue
                key = np.concatenate([g.local[h][lo:hi] for h, lo, hi in spans])
                key *= n_c  # below _FIRST_ROWS_MAX: int32 holds it
                key += np.concatenate([self.in_order[h][lo:hi] for h, lo, hi in spans])
                index = np.arange(len(key), dtype=np.int32)
                table[key[::-1]] = index[::-1]  # the last write wins: each key's first row
                earliest = table[key]
                again = np.flatnonzero(earliest != index)
                if len(again):
                    rows = np.concatenate([g.order[h][lo:hi] + g.halves[h][0]
                                           for h, lo, hi in spans])
                    ats.append(rows[again])
                    firsts.append(rows[earliest[again]])
            return ats, firsts

        found = self._parts(run)
        at = concat([a for ats, _ in found for a in ats] or [np.zeros(0, np.intp)])
        first = concat([f for _, firsts in found for f in firsts] or [np.zeros(0, np.intp)])
        order = np.argsort(at)
        return at[order], first[order]


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
