"""Valid pairs → batches: an exact cover with as few un-enrol calls as the planner can find.

Pure and columnar: ids are turned into integer codes once (pyarrow), every record's cadence set
becomes a bitmask (numpy), and the search works on *distinct* sets with their counts, never on
pairs one by one, so ten million pairs plan in a few seconds.

The model: a plan gives every record a partition of its cadence set into *pieces* of at most five
cadences; records whose piece is the same cadence set share calls, 100 to a call. So a plan costs
Σ over distinct pieces of ⌈records with that piece / 100⌉, and the cross product of every call is a
subset of the input by construction (a piece is a subset of its record's own set). The planner:

1. gives each record its own set as one piece (sets over five cadences are cut along families of
   cadences that co-occur, so records with overlapping sets share pieces);
2. walks piece sizes from 5 down to 1: pieces with the same set fill calls of 100; a remainder that
   would make a thin call is split instead — one cadence is peeled off so that the rest joins the
   biggest pool of the next size down and the peeled cadence joins the per-cadence pool;
3. tries a few thresholds for "thin" on counts only, keeps the cheapest per module, and builds the
   per-record batches only when someone asks for them.

Bitmasks need at most 64 cadences: a module with more is planned in blocks of 64 cadences (a call
then never mixes cadences of two blocks), which stays exact by construction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .models import MAX_CADENCES_PER_CALL, MAX_RECORDS_PER_CALL, Batch

_MASK_BITS = 64
#: thresholds on a remainder's pairs (records × cadences) under which it is split, not kept;
#: 0 keeps every remainder, a value above 5 × 99 splits them all
_THRESHOLDS = (0, 100, 200, 300, 500)
_DOUBLE_EXACT_BITS = 52  # float64 sums of distinct powers of two below 2**53 are exact


@dataclass(frozen=True, slots=True)
class ModulePlanStats:
    module: str
    pairs: int
    records: int
    cadences: int
    batches: int
    lower_bound: int
    naive_batches: int
    strategy: str


# --------------------------------------------------------------------------- encoding


def _as_array(values: object) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    return pa.array(list(values), pa.string())  # type: ignore[call-overload]


def _encode(values: object) -> tuple[np.ndarray, pa.Array]:
    """(codes in first-seen order, distinct values) for a column of ids or module names.

    Canonical decimal ids (what Zoho ids are) are hashed as uint64, far cheaper than strings;
    the length check guarantees two different strings never share a code ("012" vs "12").
    """
    arr = _as_array(values)
    if pa.types.is_dictionary(arr.type) and arr.null_count == 0:
        if pc.count_distinct(arr.dictionary).as_py() == len(arr.dictionary):
            return arr.indices.to_numpy(zero_copy_only=False).astype(np.int64), arr.dictionary
        arr = pc.cast(arr, arr.type.value_type)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        try:
            as_int = pc.cast(arr, pa.uint64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            as_int = None
        if as_int is not None and len(arr):
            enc = as_int.dictionary_encode()
            codes = enc.indices.to_numpy().astype(np.int64)
            digits = _decimal_digits(enc.dictionary.to_numpy())
            lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
            if np.array_equal(digits[codes], lengths):
                return codes, enc.dictionary
    enc = arr.dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def _decimal_digits(values: np.ndarray) -> np.ndarray:
    powers = np.array([10**i for i in range(1, 20)], dtype=np.uint64)
    return np.searchsorted(powers, values, side="right").astype(np.int64) + 1


# --------------------------------------------------------------------------- bit helpers


def _lowbit(x: np.ndarray) -> np.ndarray:
    return x & (~x + np.uint64(1))


def _bit_index(pow2: np.ndarray) -> np.ndarray:
    return np.log2(pow2.astype(np.float64)).astype(np.int64)  # exact for powers of two


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).astype(np.int64)


def _record_masks(r: np.ndarray, c: np.ndarray, n_records: int, n_cad: int) -> np.ndarray:
    """OR of 1 << c per record, as sums of distinct powers of two (exact in float64 up to 2**52)."""
    masks = np.zeros(n_records, dtype=np.uint64)
    for lo in range(0, n_cad, _DOUBLE_EXACT_BITS):
        sel = (c >= lo) & (c < lo + _DOUBLE_EXACT_BITS) if n_cad > _DOUBLE_EXACT_BITS else None
        rr, cc = (r, c) if sel is None else (r[sel], c[sel])
        part = np.bincount(rr, weights=np.ldexp(1.0, cc - lo), minlength=n_records)
        masks |= part.astype(np.uint64) << np.uint64(lo)
    return masks


# --------------------------------------------------------------------------- first pieces


def _cadence_families(tmask: np.ndarray, tcount: np.ndarray, n_cad: int,
                      cad_count: np.ndarray) -> list[int]:
    """Greedy blocks of ≤5 cadences that co-occur most (Jaccard), as bitmasks."""
    multi = _popcount(tmask) > 1
    tm, tc = tmask[multi], tcount[multi]
    if len(tm) > 200_000:  # the heaviest sets tell the families apart well enough
        top = np.argsort(-tc, kind="stable")[:200_000]
        tm, tc = tm[top], tc[top]
    bits = ((tm[:, None] >> np.arange(n_cad, dtype=np.uint64)) & np.uint64(1)).astype(np.float32)
    co = (bits * tc[:, None].astype(np.float32)).T @ bits
    n = cad_count.astype(np.float64)
    sim = co / np.maximum(n[:, None] + n[None, :] - co, 1.0)
    np.fill_diagonal(sim, 0.0)
    free = np.ones(n_cad, dtype=bool)
    blocks: list[int] = []
    while free.any():
        seed = int(np.flatnonzero(free)[np.argmax(cad_count[free])])
        block = [seed]
        free[seed] = False
        while len(block) < MAX_CADENCES_PER_CALL and free.any():
            score = np.where(free, sim[block].sum(axis=0), -1.0)
            best = int(np.argmax(score))
            if score[best] <= 0:
                break
            block.append(best)
            free[best] = False
        blocks.append(sum(1 << b for b in block))
    return blocks


def _first_pieces(tmask: np.ndarray, tcount: np.ndarray, n_cad: int,
                  cad_count: np.ndarray) -> np.ndarray:
    """(types × pieces) masks, 0-padded: a type's own set, cut into ≤5-cadence pieces if larger."""
    size = _popcount(tmask)
    big = np.flatnonzero(size > MAX_CADENCES_PER_CALL)
    if not len(big):
        return tmask[:, None].copy()
    blocks = _cadence_families(tmask, tcount, n_cad, cad_count)
    need = -(-size[big] // MAX_CADENCES_PER_CALL)
    width = int(max(need.max(), len(blocks)))
    pieces = np.zeros((len(tmask), width), dtype=np.uint64)
    pieces[:, 0] = np.where(size > MAX_CADENCES_PER_CALL, 0, tmask)
    m = tmask[big]
    by_block = np.stack([m & np.uint64(b) for b in blocks], axis=1)
    n_block = (by_block != 0).sum(axis=1)
    fits = n_block == need  # cutting along families costs no extra piece: take it
    # otherwise: consecutive chunks of 5 in family order
    order = [b for blk in blocks for b in range(n_cad) if blk >> b & 1]
    pos = np.empty(n_cad, dtype=np.uint64)
    pos[order] = np.arange(n_cad, dtype=np.uint64)
    perm = np.zeros(len(m), dtype=np.uint64)
    for b in range(n_cad):
        perm |= ((m >> np.uint64(b)) & np.uint64(1)) << pos[b]
    chunks = np.zeros((len(m), width), dtype=np.uint64)
    for j in range(width):
        chunk = np.zeros(len(m), dtype=np.uint64)
        for _ in range(MAX_CADENCES_PER_CALL):
            low = _lowbit(perm)
            chunk |= low
            perm ^= low
        for b in range(n_cad):  # back to cadence bit positions
            chunks[:, j] |= ((chunk >> pos[b]) & np.uint64(1)) << np.uint64(b)
    packed = np.zeros((len(m), width), dtype=np.uint64)
    nz = by_block != 0
    slot = np.cumsum(nz, axis=1) - 1
    rows, cols = np.nonzero(nz)
    packed[rows, slot[rows, cols]] = by_block[rows, cols]
    pieces[big] = np.where(fits[:, None], packed, chunks)
    keep = (pieces != 0).any(axis=0)
    return pieces[:, keep]


# --------------------------------------------------------------------------- search on counts


@dataclass(frozen=True, slots=True)
class _Level:
    """Decisions for one piece size: every distinct piece set with its pooled count."""

    masks: np.ndarray  # sorted distinct piece sets
    counts: np.ndarray  # records holding that piece
    keep: np.ndarray  # bool: the remainder gets its own call
    peel: np.ndarray  # uint64: the bit peeled off a split remainder (0 when kept/none)
    base: np.ndarray  # first batch index (relative to the part) of each set's calls


@dataclass(frozen=True, slots=True)
class _Search:
    threshold: int
    n_batches: int
    levels: dict[int, _Level]


def _aggregate(masks: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not masks:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    m = np.concatenate(masks)
    w = np.concatenate(counts)
    codes, uniq = pd.factorize(m, sort=True)
    return np.asarray(uniq, dtype=np.uint64), np.bincount(codes, weights=w).astype(np.int64)


def _choose_peel(parents: np.ndarray, below: np.ndarray, below_counts: np.ndarray,
                 rarity: np.ndarray) -> np.ndarray:
    """For each set to split, the bit whose removal leaves the set pooled most one size down
    (ties: the rarest cadence, which is the least likely to find partners anyway)."""
    index = pd.Index(below)
    best_key = np.full(len(parents), -1, dtype=np.int64)
    chosen = np.zeros(len(parents), dtype=np.uint64)
    left = parents.copy()
    while True:
        low = _lowbit(left)
        if not low.any():
            return chosen
        left ^= low
        where = index.get_indexer(parents ^ low)
        pooled = np.where(where >= 0, below_counts[np.maximum(where, 0)], 0)
        key = np.where(low != 0, pooled * _MASK_BITS + rarity[_bit_index(np.maximum(low, 1))], -1)
        better = key > best_key
        best_key = np.where(better, key, best_key)
        chosen = np.where(better, low, chosen)


def _search(piece_masks: np.ndarray, piece_counts: np.ndarray, rarity: np.ndarray,
            threshold: int) -> _Search:
    """Cost of one splitting threshold, from piece counts alone (no per-record work)."""
    cap = MAX_RECORDS_PER_CALL
    size = _popcount(piece_masks)
    pending: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {
        s: ([piece_masks[size == s]], [piece_counts[size == s]])
        for s in range(1, MAX_CADENCES_PER_CALL + 1)
    }
    levels: dict[int, _Level] = {}
    total = 0
    for s in range(MAX_CADENCES_PER_CALL, 0, -1):
        masks, counts = _aggregate(*pending[s])
        full, rest = counts // cap, counts % cap
        split = (rest > 0) & (rest * s < threshold) if s > 1 else np.zeros(len(masks), bool)
        keep = (rest > 0) & ~split
        peel = np.zeros(len(masks), dtype=np.uint64)
        if split.any():
            parents, moved = masks[split], rest[split]
            chosen = _choose_peel(parents, *_aggregate(*pending[s - 1]), rarity)
            peel[split] = chosen
            pending[s - 1][0].append(parents ^ chosen)
            pending[s - 1][1].append(moved)
            pending[1][0].append(chosen)
            pending[1][1].append(moved)
        n_calls = full + keep
        base = total + np.concatenate(([0], np.cumsum(n_calls)[:-1])).astype(np.int64)
        total += int(n_calls.sum())
        levels[s] = _Level(masks, counts, keep, peel, base)
    return _Search(threshold, total, levels)
