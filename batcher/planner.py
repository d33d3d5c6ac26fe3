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

Bitmasks need at most 64 cadences: a module with more is planned in blocks of 60 cadences (a call
then never mixes cadences of two blocks), which stays exact by construction. Past 64 blocks (far
more cadences than an org has: most likely record ids in the cadence column) a block's search is
too many milliseconds; there cadences that hold exactly the same records share calls, 5 a call,
in one pass over the pairs, and the parts are made only when batches are built.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrays import arrow_of, both, index_in, numpy_of, stable_order
from .hashing import encode, encode_many
from .models import MAX_CADENCES_PER_CALL, MAX_RECORDS_PER_CALL, Batch, BatchBlock

_MASK_BITS = 64
#: cadences of a block when a module has more than _MASK_BITS: a multiple of the 5 a call takes,
#: so no block ends in a call of fewer (blocks of 64 cost a call more than ⌈cadences / 5⌉ ×
#: ⌈records / 100⌉ on a list of records asked out of 65 cadences or more)
_BLOCK_CADENCES = _MASK_BITS - _MASK_BITS % MAX_CADENCES_PER_CALL
_Ids = pa.Array | pa.ChunkedArray | Sequence[str]
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


def _canonical_decimals(arr: pa.Array) -> bool:
    """Digits only, no leading zero: such strings are exactly the text of their uint64 value, so
    hashing the integers keeps distinct strings distinct. (A failing cast is slow: ask first.)"""
    return bool(
        (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type))
        and len(arr) and arr.null_count == 0
        and pc.all(pc.ascii_is_decimal(arr)).as_py()
        and not pc.any(pc.starts_with(arr, "0")).as_py())


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
    if _canonical_decimals(arr):
        try:
            enc = pc.cast(arr, pa.uint64()).dictionary_encode()
        except pa.ArrowInvalid:  # more than 20 digits
            pass
        else:
            return enc.indices.to_numpy().astype(np.int64), enc.dictionary
    enc = arr.dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


# --------------------------------------------------------------------------- bit helpers


def _lowbit(x: np.ndarray) -> np.ndarray:
    return x & (~x + np.uint64(1))


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).astype(np.int64)


def _record_masks(r: np.ndarray, c: np.ndarray, n_records: int, n_cad: int) -> np.ndarray:
    """OR of 1 << c per record, as sums of distinct powers of two (exact in float64 up to 2**52)."""
    masks = np.zeros(n_records, dtype=np.uint64)
    for lo in range(0, n_cad, _DOUBLE_EXACT_BITS):
        sel = (c >= lo) & (c < lo + _DOUBLE_EXACT_BITS) if n_cad > _DOUBLE_EXACT_BITS else None
        rr, cc = (r, c) if sel is None else (r[sel], c[sel])
        weights = np.ldexp(1.0, np.arange(-lo, n_cad - lo))[cc]
        part = np.bincount(rr, weights=weights, minlength=n_records)
        masks |= part.astype(np.uint64) << np.uint64(lo)
    return masks


# --------------------------------------------------------------------------- first pieces


_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.float64)  # (256, 8)


def _co_occurrence(tm: np.ndarray, tc: np.ndarray, n_cad: int) -> np.ndarray:
    """(n_cad × n_cad) records holding both cadences, from sets and their counts: one weighted
    histogram per pair of mask bytes (256 × 256), spread to bits by a small product — exact
    sums, and no (sets × cadences) matrix (BLAS on one took a second on a busy machine)."""
    n_bytes = -(-n_cad // 8)
    byte = [((tm >> np.uint64(8 * k)) & np.uint64(255)).astype(np.intp) for k in range(n_bytes)]
    co = np.zeros((8 * n_bytes, 8 * n_bytes))
    w = tc.astype(np.float64)
    for a in range(n_bytes):
        for b in range(a, n_bytes):
            hist = np.bincount(byte[a] * 256 + byte[b], weights=w, minlength=1 << 16)
            block = _BYTE_BITS.T @ hist.reshape(256, 256) @ _BYTE_BITS
            co[8 * a:8 * a + 8, 8 * b:8 * b + 8] = block
            co[8 * b:8 * b + 8, 8 * a:8 * a + 8] = block.T
    return co[:n_cad, :n_cad]


def _cadence_families(tmask: np.ndarray, tcount: np.ndarray, n_cad: int,
                      cad_count: np.ndarray) -> list[int]:
    """Greedy blocks of ≤5 cadences that co-occur most (Jaccard), as bitmasks."""
    multi = _popcount(tmask) > 1
    tm, tc = tmask[multi], tcount[multi]
    if len(tm) > 200_000:  # the heaviest sets tell the families apart well enough
        top = np.argsort(-tc, kind="stable")[:200_000]
        tm, tc = tm[top], tc[top]
    co = _co_occurrence(tm, tc, n_cad)
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


class _Permutation:
    """Moves bit ``source[i]`` of masks to bit i, a byte at a time through tables of 256 masks:
    a few gathers instead of a shift per bit."""

    def __init__(self, source: np.ndarray, n_bits: int) -> None:
        dest = np.empty(n_bits, dtype=np.uint64)
        dest[source] = np.arange(len(source), dtype=np.uint64)
        byte = np.arange(256, dtype=np.uint64)
        self.tables = np.zeros((-(-n_bits // 8), 256), dtype=np.uint64)
        for b in range(n_bits):
            self.tables[b // 8] |= ((byte >> np.uint64(b % 8)) & np.uint64(1)) << dest[b]

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        out = np.zeros(len(masks), dtype=np.uint64)
        for i, table in enumerate(self.tables):
            out |= table[((masks >> np.uint64(8 * i)) & np.uint64(255)).astype(np.intp)]
        return out


def _first_pieces(tmask: np.ndarray, tcount: np.ndarray, n_cad: int,
                  cad_count: np.ndarray) -> np.ndarray:
    """(types × pieces) masks, 0-padded: a type's own set, cut into ≤5-cadence pieces if larger
    (as few pieces as its size needs: along cadence families when that costs no extra piece,
    else consecutive chunks of 5 in family order)."""
    size = _popcount(tmask)
    big = np.flatnonzero(size > MAX_CADENCES_PER_CALL)
    if not len(big):
        return tmask[:, None].copy()
    blocks = _cadence_families(tmask, tcount, n_cad, cad_count)
    need = -(-size[big] // MAX_CADENCES_PER_CALL)
    pieces = np.zeros((len(tmask), int(need.max())), dtype=np.uint64)
    pieces[:, 0] = np.where(size > MAX_CADENCES_PER_CALL, 0, tmask)
    m = tmask[big]
    by_block = np.stack([m & np.uint64(b) for b in blocks], axis=1)
    nz = by_block != 0
    along = nz.sum(axis=1) == need  # along families costs no extra piece: its parts, packed
    fits = np.flatnonzero(along)
    rows, cols = np.nonzero(nz[fits])
    slot = np.cumsum(nz[fits], axis=1) - 1
    pieces[big[fits[rows]], slot[rows, cols]] = by_block[fits[rows], cols]
    rest = np.flatnonzero(~along)
    order = np.array([b for blk in blocks for b in range(n_cad) if blk >> b & 1])
    to_family, back = _Permutation(order, n_cad), _Permutation(np.argsort(order), n_cad)
    perm = to_family(m[rest])
    for j in range(pieces.shape[1]):
        chunk = np.zeros(len(rest), dtype=np.uint64)
        for _ in range(MAX_CADENCES_PER_CALL):
            low = _lowbit(perm)
            chunk |= low
            perm ^= low
        pieces[big[rest], j] = back(chunk)  # back to cadence bit positions
    return pieces


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
    uniq, codes = np.unique(m, return_inverse=True)
    return uniq.astype(np.uint64, copy=False), np.bincount(codes, weights=w).astype(np.int64)


def _pool_lookup(pool: tuple[np.ndarray, np.ndarray], masks: np.ndarray) -> np.ndarray:
    """The pooled count of each mask (0 when the pool has none); pool masks are sorted."""
    found = np.zeros(len(masks), dtype=np.int64)
    if not len(pool[0]):
        return found
    where = np.minimum(np.searchsorted(pool[0], masks), len(pool[0]) - 1)
    hit = pool[0][where] == masks
    found[hit] = pool[1][where[hit]]
    return found


#: C(b, i) for a bit position b < 64 and i ≤ 5: the colex rank of a set is Σ C(bit, i)
_BINOM = np.array([[math.comb(b, i) for i in range(MAX_CADENCES_PER_CALL + 1)]
                   for b in range(_MASK_BITS)], dtype=np.int64)
_BINOM_OF = [np.ascontiguousarray(_BINOM[:, i]) for i in range(MAX_CADENCES_PER_CALL + 1)]
#: a pool is a dense table when it has at most this many possible sets a piece, or this few
#: at all (else sorted): its memory stays a small multiple of the pieces'
_DENSE_PER_PIECE, _DENSE_MIN = 4, 1 << 16


def _rank(masks: np.ndarray, size: int) -> np.ndarray:
    """Colex rank of each ``size``-cadence set: a dense index in 0..C(bits, size)-1 whose order
    is the masks' numeric order (sets of one size compare by their highest differing bit)."""
    rank = np.zeros(len(masks), dtype=np.int64)
    left = masks.copy()
    for i in range(1, size + 1):
        low = _lowbit(left)
        left ^= low
        rank += _BINOM_OF[i].take(np.bitwise_count(low - np.uint64(1)))
    return rank


class _Pool:
    """The pieces of one size pooled by set, as the search adds them: count per distinct set.

    A table indexed by colex rank when the possible sets are not many more than the pieces
    (40 cadences: 658k sets of 5), so adding is a bincount and a lookup one gather, instead of
    a sort per level and a binary search per lookup; else sorted masks, as before."""

    def __init__(self, size: int, n_bits: int, n_pieces: int) -> None:
        self.size = size
        n_sets = math.comb(n_bits, size)
        self.dense = n_sets <= _DENSE_PER_PIECE * n_pieces + _DENSE_MIN
        if self.dense:
            self.counts = np.zeros(n_sets, dtype=np.int64)
            self.masks = np.zeros(n_sets, dtype=np.uint64)
        self._parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def first(piece_masks: np.ndarray, piece_counts: np.ndarray) -> dict[int, _Pool]:
        """The pools of the first pieces, by size."""
        size = _popcount(piece_masks)
        n_bits = int(np.bitwise_or.reduce(piece_masks)).bit_length() if len(piece_masks) else 0
        pools = {s: _Pool(s, n_bits, len(piece_masks))
                 for s in range(1, MAX_CADENCES_PER_CALL + 1)}
        for s, pool in pools.items():
            pool.add(piece_masks[size == s], piece_counts[size == s])
        return pools

    def copy(self) -> _Pool:
        out = copy.copy(self)
        if self.dense:
            out.counts, out.masks = self.counts.copy(), self.masks.copy()
        out._parts = (list(self._parts[0]), list(self._parts[1]))
        return out

    def add(self, masks: np.ndarray, counts: np.ndarray) -> None:
        if not len(masks):
            return
        if self.dense:
            rank = _rank(masks, self.size)
            if len(rank) * 16 < len(self.counts):  # a few: no pass over the whole table
                np.add.at(self.counts, rank, counts)
            else:
                self.counts += np.bincount(rank, weights=counts,
                                           minlength=len(self.counts)).astype(np.int64)
            self.masks[rank] = masks
        else:
            self._parts[0].append(masks)
            self._parts[1].append(counts)
            self._sorted = None

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct sets in ascending order, pooled count of each)."""
        if self.dense:
            held = np.flatnonzero(self.counts)
            return self.masks[held], self.counts[held]
        if self._sorted is None:
            self._sorted = _aggregate(*self._parts)
        return self._sorted

    def lookup(self, masks: np.ndarray, rank: Callable[[], np.ndarray] | None = None
               ) -> np.ndarray:
        """The pooled count of each set (0 when none); ``rank``: their ranks, when the caller
        has them cheaper than from the masks."""
        if self.dense:
            return self.counts[_rank(masks, self.size) if rank is None else rank()]
        return _pool_lookup(self.totals(), masks)


def _choose_split(parents: np.ndarray, size: int, pools: dict[int, _Pool]) -> np.ndarray:
    """For each set to split, the part X (one or two cadences) to split off: the split whose
    smaller pool is the biggest (both halves should find company), then the biggest rest pool."""
    bits, binom = [], []
    left = parents.copy()
    for _ in range(size):
        low = _lowbit(left)
        left ^= low
        bits.append(low)
        pos = np.bitwise_count(low - np.uint64(1))
        binom.append([None] + [_BINOM_OF[i].take(pos) for i in range(1, size)])

    def rank_of(members: list[int]) -> Callable[[], np.ndarray]:
        """The colex rank of the parents' subset of these bits: Σ C(its i-th bit, i)."""
        return lambda: sum(binom[j][i] for i, j in enumerate(members, start=1))

    candidates = [[j] for j in range(size)]
    if size >= 4:
        candidates += [[a, b] for a in range(size) for b in range(a + 1, size)]
    # (smaller pool, rest pool) compared as one key: pools count records, far below 2**31
    best = np.full(len(parents), -1, dtype=np.int64)
    chosen = np.zeros(len(parents), dtype=np.uint64)
    for members in candidates:
        part = bits[members[0]] if len(members) == 1 else bits[members[0]] | bits[members[1]]
        rest = [j for j in range(size) if j not in members]
        rest_pool = pools[len(rest)].lookup(parents ^ part, rank_of(rest))
        key = np.minimum(rest_pool, pools[len(members)].lookup(part, rank_of(members)))
        key <<= 32
        key |= rest_pool
        better = key > best
        np.copyto(best, key, where=better)
        np.copyto(chosen, part, where=better)
    return chosen


def _search(first: dict[int, _Pool], threshold: int, memo: dict[int, np.ndarray]) -> _Search:
    """Cost of one splitting threshold, from piece counts alone (no per-record work), starting
    from ``first`` (the pools of the first pieces: left as they are).

    ``memo``: the splits chosen at the first level that splits, while the pools still hold
    the first pieces alone — the same for every threshold, so a search with a lower threshold
    (which splits a subset there) takes them from the first search instead of choosing again."""
    cap = MAX_RECORDS_PER_CALL
    pools = {s: pool.copy() for s, pool in first.items()}
    levels: dict[int, _Level] = {}
    total = 0
    fresh = True  # no split yet: the pools hold the first pieces alone
    for s in range(MAX_CADENCES_PER_CALL, 0, -1):
        masks, counts = pools[s].totals()
        full, rest = counts // cap, counts % cap
        split = (rest > 0) & (rest * s < threshold) if s > 1 else np.zeros(len(masks), bool)
        keep = (rest > 0) & ~split
        peel = np.zeros(len(masks), dtype=np.uint64)
        if split.any():
            parents, moved = masks[split], rest[split]
            if fresh and s in memo:
                chosen = memo[s][split]
            else:
                chosen = _choose_split(parents, s, pools)
                if fresh:
                    memo[s] = peel.copy()
                    memo[s][split] = chosen
            fresh = False
            peel[split] = chosen
            for child in (parents ^ chosen, chosen):
                child_size = _popcount(child)
                for k in range(1, s):
                    pools[k].add(child[child_size == k], moved[child_size == k])
        n_calls = full + keep
        base = total + np.concatenate(([0], np.cumsum(n_calls)[:-1])).astype(np.int64)
        total += int(n_calls.sum())
        levels[s] = _Level(masks, counts, keep, peel, base)
    return _Search(threshold, total, levels)


#: a search of fewer pieces runs on one thread (a thread costs more than it saves), and is
#: remembered for a block of the same pieces (a file of thousands of small modules)
_SMALL_SEARCH = 1 << 10
_KNOWN_SEARCHES = 1 << 14  # most small searches remembered in one plan


def _best_search(piece_masks: np.ndarray, piece_counts: np.ndarray,
                 known: dict[bytes, _Search] | None = None) -> _Search:
    """The cheapest threshold (the lowest among equals). The highest is searched first: where
    the searches first split, it splits a superset of what every other does (see ``memo``);
    the others then run on two threads (numpy's kernels release the GIL), each taking its
    thresholds in descending order with a memo of its own, so that what it reads from the memo
    was written by a search with a higher threshold.

    ``known``: the plan's small searches by their pieces; a search depends on nothing else."""
    small = len(piece_masks) < _SMALL_SEARCH
    key = b""
    if small and known is not None:
        key = (np.ascontiguousarray(piece_masks, np.uint64).tobytes() + b"|"
               + np.ascontiguousarray(piece_counts, np.int64).tobytes())
        if (hit := known.get(key)) is not None:
            return hit
    first = _Pool.first(piece_masks, piece_counts)
    highest, *others = sorted(_THRESHOLDS, reverse=True)
    memo: dict[int, np.ndarray] = {}
    found = [_search(first, highest, memo)]

    def searches(thresholds: list[int]) -> list[_Search]:
        own = dict(memo)
        return [_search(first, t, own) for t in thresholds]

    halves = [(others[0::2],), (others[1::2],)]
    for done in ([searches(*h) for h in halves] if small else both(searches, halves)):
        found += done
    best = min(found, key=lambda s: (s.n_batches, s.threshold))
    if small and known is not None and len(known) < _KNOWN_SEARCHES:
        known[key] = best
    return best


# --------------------------------------------------------------------------- one block of a module


def _dense(codes: np.ndarray, universe: int) -> tuple[np.ndarray, np.ndarray]:
    """(local codes 0..n-1 in the order of the global codes, local → global)."""
    if len(codes) * 4 >= universe:
        present = np.zeros(universe, dtype=bool)
        present[codes] = True
        if present.all():  # already dense (one module: the reader's codes are): keep them
            return np.asarray(codes, dtype=np.int64), np.arange(universe)
        local_of = np.cumsum(present, dtype=np.int64) - 1
        return local_of[codes], np.flatnonzero(present)
    glob, local = np.unique(codes, return_inverse=True)
    return local.astype(np.int64, copy=False), glob


#: (positions of the part's pairs in the input, None for all; local record; local cadence)
_PairSource = Callable[[], tuple[np.ndarray | None, np.ndarray, np.ndarray]]


@dataclass(frozen=True, slots=True)
class _Part:
    """One module (or one 64-cadence block of it), solved on counts; records built on demand."""

    module: int
    pairs: _PairSource  # called only when batches are built (``batcher plan`` never does)
    rec_global: np.ndarray  # local record → record code
    cad_global: np.ndarray  # local cadence → cadence code
    record_type: np.ndarray  # local record → index into pieces
    pieces: np.ndarray  # (types × slots) first pieces
    search: _Search


def _bit_counts(tmask: np.ndarray, tcount: np.ndarray, n_bits: int) -> np.ndarray:
    """Records per cadence, from the distinct sets and their counts (no pass over pairs): a
    weighted histogram of each mask byte, spread to its 8 bits."""
    w = tcount.astype(np.float64)
    per_byte = [np.bincount(((tmask >> np.uint64(8 * k)) & np.uint64(255)).astype(np.intp),
                            weights=w, minlength=256) @ _BYTE_BITS
                for k in range(-(-n_bits // 8))]
    return np.concatenate(per_byte)[:n_bits].round().astype(np.int64) if per_byte else \
        np.zeros(0, np.int64)


def _solve_types(module: int, pairs: _PairSource, record_type: np.ndarray, tmask: np.ndarray,
                 tcount: np.ndarray, cad_count: np.ndarray, rec_global: np.ndarray,
                 cad_global: np.ndarray, known: dict[bytes, _Search] | None = None) -> _Part:
    """Plan one block from its distinct cadence sets (``tmask``, local bits) and their counts."""
    pieces = _first_pieces(tmask, tcount, len(cad_global), cad_count)
    nz = pieces != 0
    search = _best_search(pieces[nz], np.broadcast_to(tcount[:, None], pieces.shape)[nz], known)
    return _Part(module, pairs, rec_global, cad_global, record_type, pieces, search)


def _solve(module: int, pair_pos: np.ndarray | None, r: np.ndarray, rec_global: np.ndarray,
           c_local: np.ndarray, cad_global: np.ndarray,
           known: dict[bytes, _Search] | None = None) -> _Part:
    """Plan one block from its pairs; ``r`` are dense local records (0..n-1)."""
    n_cad = len(cad_global)
    record_type, tmask = encode(_record_masks(r, c_local, len(rec_global), n_cad))
    tcount = np.bincount(record_type, minlength=len(tmask))
    return _solve_types(module, lambda: (pair_pos, r, c_local), record_type, tmask, tcount,
                        np.bincount(c_local, minlength=n_cad), rec_global, cad_global, known)


def _strategy(threshold: int) -> str:
    if threshold == 0:
        return "exact sets"
    if threshold > MAX_CADENCES_PER_CALL * (MAX_RECORDS_PER_CALL - 1):
        return "exact sets, every remainder split"
    return f"exact sets, remainders under {threshold} pairs split"


def _lower_bound(pairs: int, record_chunks: int, cad_count: np.ndarray) -> int:
    """``record_chunks``: Σ over records of ⌈cadences of the record / 5⌉."""
    cap_r, cap_c = MAX_RECORDS_PER_CALL, MAX_CADENCES_PER_CALL
    by_records = -(-record_chunks // cap_r)
    by_cadences = -(-int((-(-cad_count // cap_r)).sum()) // cap_c)
    return max(-(-pairs // (cap_r * cap_c)), by_records, by_cadences)


def _stats(name: str, parts: Sequence[_Part], pairs: int, records: int, record_chunks: int,
           cad_count: np.ndarray) -> ModulePlanStats:
    strategies = dict.fromkeys(_strategy(p.search.threshold) for p in parts)
    return ModulePlanStats(
        module=name, pairs=pairs, records=records, cadences=len(cad_count),
        batches=sum(p.search.n_batches for p in parts),
        lower_bound=_lower_bound(pairs, record_chunks, cad_count),
        naive_batches=int((-(-cad_count // MAX_RECORDS_PER_CALL)).sum()),
        strategy="; ".join(strategies))


# --------------------------------------------------------------------------- the plan


class Plan:
    """Batches for a set of valid pairs, with the bounds that say how good the plan is.

    Counts are known at once; per-record batch membership (``pair_batch``, ``iter_batches``)
    is built on first use, so ``batcher plan`` never pays for it.
    """

    def __init__(self, n_pairs: int, per_module: dict[str, ModulePlanStats],
                 parts: tuple[_Part, ...], offsets: tuple[int, ...], module_names: list[str],
                 record_ids: pa.Array | Callable[[], _Ids], cadence_ids: pa.Array,
                 record_rep: np.ndarray | None = None) -> None:
        self.n_pairs = n_pairs
        self.per_module = per_module
        self.n_batches = sum(s.batches for s in per_module.values())
        self.lower_bound = sum(s.lower_bound for s in per_module.values())
        self.naive_batches = sum(s.naive_batches for s in per_module.values())
        self._parts = parts
        self._offsets = offsets
        self._module_names = module_names
        self._record_ids = record_ids
        self._record_rep = record_rep  # code → row of record_ids, when those are per pair
        self._cadence_ids = cadence_ids
        self._made: list[_Batches] | None = None
        self._leaves: list[_Leaves] | None = None
        self._built: list[_Built] | None = None
        self._batches_lock, self._built_lock = threading.Lock(), threading.Lock()
        self._placement: tuple[np.ndarray, np.ndarray] | None = None
        self._width = max(6, len(str(max(self.n_batches - 1, 0))))

    def __repr__(self) -> str:
        return (f"Plan(n_pairs={self.n_pairs}, n_batches={self.n_batches}, "
                f"lower_bound={self.lower_bound}, naive_batches={self.naive_batches})")

    # ids -------------------------------------------------------------------
    def batch_id_of(self, index: int) -> str:
        if not 0 <= index < self.n_batches:
            raise IndexError(f"batch index {index} out of range 0..{self.n_batches - 1}")
        return f"b{index:0{self._width}d}"

    def batch_ids(self, indices: np.ndarray | Sequence[int] | None = None) -> pa.Array:
        """Batch ids as strings: of ``indices`` (e.g. ``pair_batch``), else of every batch."""
        idx = np.arange(self.n_batches) if indices is None else np.asarray(indices)
        text = pc.utf8_lpad(pc.cast(pa.array(idx, pa.int64()), pa.string()), self._width, "0")
        return pc.binary_join_element_wise("b", text, "")

    # per record ----------------------------------------------------------------
    def _batches(self) -> list[_Batches]:
        """Each part's batches (their records and cadence sets), made once: what the calls
        hold, without which pair goes where (:meth:`_build`)."""
        with self._batches_lock:
            if self._made is None:
                made = [_batches_of(p) for p in self._parts]
                self._leaves = [leaves for _, leaves in made]
                self._made = [batches for batches, _ in made]
            return self._made

    def _build(self) -> list[_Built]:
        """Where each pair goes, made once (from the batches: :meth:`blocks` may read them in
        another thread meanwhile)."""
        batches = self._batches()
        with self._built_lock:
            if self._built is None:
                assert self._leaves is not None
                self._built = [_pairs_of(p, b, leaves) for p, b, leaves
                               in zip(self._parts, batches, self._leaves, strict=True)]
                self._leaves = None  # spent
            return self._built

    def placement(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each pair goes, as the journal lays the batches' pairs out: the batches in index
        order, end to end, each batch's pairs in :meth:`Batch.pairs` order (record-major).
        Returns (for each input pair, in input order, its place there, int64; where each batch
        starts there, ``n_batches + 1`` entries, the last the number of pairs). Made once; the
        caller may not change them."""
        if self._placement is None:
            built = self._build()
            starts, firsts, total = [np.zeros(1, dtype=np.int64)], [], 0
            for b in built:  # the parts' batches follow each other
                firsts.append(total)
                starts.append(b.starts[1:] + total)
                total += int(b.starts[-1])
            if len(built) == 1 and built[0].pair_pos is None:
                slots = built[0].pair_slot  # one part holding every pair: its own places
            else:
                slots = np.full(self.n_pairs, -1, dtype=np.int64)
                for b, first in zip(built, firsts, strict=True):
                    if b.pair_pos is None:
                        np.add(b.pair_slot, first, out=slots)
                    else:
                        slots[b.pair_pos] = b.pair_slot + first
            self._placement = (slots, np.concatenate(starts))
        return self._placement

    @property
    def pair_batch(self) -> np.ndarray:
        """For each input pair, in input order, the index of the batch that carries it."""
        slots, starts = self.placement()
        return np.searchsorted(starts, slots, side="right") - 1

    @property
    def pair_rank(self) -> np.ndarray:
        """For each input pair, in input order, its index in its batch's ``Batch.pairs()``
        (record-major): with :attr:`pair_batch`, where every pair's answer belongs."""
        slots, starts = self.placement()
        return slots - starts[self.pair_batch]

    def _records(self) -> pa.Array | pa.ChunkedArray:
        """The record ids, made on first use when the caller handed a function."""
        if callable(self._record_ids):
            self._record_ids = _id_column(self._record_ids())
        return self._record_ids

    def iter_batches(self) -> Iterator[Batch]:
        """Every batch in index order, its records in the order the plan placed them (an order
        that depends on the input only)."""
        for block in self.blocks():
            texts = _texts(block.record_ids)
            for i, (batch_id, cadences) in enumerate(zip(block.batch_ids, block.cadence_ids,
                                                         strict=True)):
                s, e = int(block.offsets[i]), int(block.offsets[i + 1])
                yield Batch(batch_id, block.module, tuple(texts[s:e]), cadences)

    def blocks(self, step: int = 2000) -> Iterator[BatchBlock]:
        """The batches of :meth:`iter_batches`, ``step`` at a time as columns: no Python object
        per record id (the journal stores ten million of them in a few seconds)."""
        cadence_text = _texts(self._cadence_ids)
        for part, made, offset in zip(self._parts, self._batches(), self._offsets, strict=True):
            module = self._module_names[part.module]
            n = len(made.ptr) - 1
            # a part's batches share a few dozen cadence sets: each set's ids are made once
            cadences_of: dict[int, tuple[str, ...]] = {}
            for mask in np.unique(made.masks).tolist():
                cadences_of[mask] = tuple(cadence_text[int(part.cad_global[i])]
                                          for i in _bits(mask))
            masks = made.masks.tolist()
            for b0 in range(0, n, step):
                b1 = min(n, b0 + step)
                lo, hi = int(made.ptr[b0]), int(made.ptr[b1])
                codes = part.rec_global[made.records[lo:hi]]
                if self._record_rep is not None:
                    codes = self._record_rep[codes]
                yield BatchBlock(
                    module, [self.batch_id_of(offset + b) for b in range(b0, b1)],
                    made.ptr[b0:b1 + 1] - lo, self._records().take(arrow_of(np.asarray(codes))),
                    [cadences_of[m] for m in masks[b0:b1]])


def _texts(arr: pa.Array) -> list[str]:
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr.to_pylist()


def _bits(mask: int) -> list[int]:
    return [b for b in range(mask.bit_length()) if mask >> b & 1]


@dataclass(frozen=True, slots=True)
class _Batches:
    ptr: np.ndarray  # batch b's records are records[ptr[b]:ptr[b + 1]]
    records: np.ndarray  # local record indices, batch by batch
    masks: np.ndarray  # cadence set (local bits) of each batch


@dataclass(frozen=True, slots=True)
class _Leaves:
    """What placing the pairs needs of the batches' making, dropped once they are placed."""
    rec: np.ndarray  # record of each leaf (a record's piece in one batch)
    mask: np.ndarray  # its cadence set
    batch: np.ndarray  # its batch, leaves in batch then record order
    order: np.ndarray  # leaf index of each in that order


@dataclass(frozen=True, slots=True)
class _Built:
    pair_pos: np.ndarray | None  # positions of the part's pairs in the input (None: all)
    pair_slot: np.ndarray  # per pair of the part, its place in the part's batches' pairs
    starts: np.ndarray  # where each of the part's batches starts among them (+ the end)

    @property
    def pair_batch(self) -> np.ndarray:
        """Per pair of the part, its batch index relative to the part."""
        return np.searchsorted(self.starts, self.pair_slot, side="right") - 1

    @property
    def pair_rank(self) -> np.ndarray:
        """Per pair of the part, its index in its batch's Batch.pairs()."""
        return self.pair_slot - self.starts[self.pair_batch]


def _batches_of(part: _Part) -> tuple[_Batches, _Leaves]:
    leaf_rec, leaf_group, leaf_batch, group_masks = _leaves(part)
    n_batches = part.search.n_batches
    leaf_mask = group_masks[leaf_group]
    del leaf_group
    masks = np.zeros(n_batches, dtype=np.uint64)
    masks[leaf_batch] = leaf_mask
    # batch → records
    batch, records, order = _by_batch(leaf_batch, leaf_rec, n_batches)
    del leaf_batch
    ptr = np.zeros(n_batches + 1, dtype=np.int64)
    np.cumsum(np.bincount(batch, minlength=n_batches), out=ptr[1:])
    return _Batches(ptr, records, masks), _Leaves(leaf_rec, leaf_mask, batch, order)


def _pairs_of(part: _Part, made: _Batches, leaves: _Leaves) -> _Built:
    # arrays of pairs and leaves are tens of MB: a new one costs page faults comparable to the
    # work on it, so the big ones below are few and updated in place (the leaves' included:
    # they are spent here)
    ptr, masks, batch, order = made.ptr, made.masks, leaves.batch, leaves.order
    pair_pos, pair_r, pair_c = part.pairs()
    # the batches' pairs laid end to end, batch by batch, each batch's in Batch.pairs() order:
    # a pair's place there is its batch's start + its record's place among the batch's records
    # × the batch's cadences + its cadence's place among them (in bit order).
    # Per leaf: the place of its first pair, back in leaf order (there records ascend in long
    # runs, so what follows walks memory instead of jumping)
    width = np.bitwise_count(masks).astype(np.int64)
    starts = np.zeros(len(masks) + 1, dtype=np.int64)
    np.cumsum(np.diff(ptr) * width, out=starts[1:])
    first = np.arange(len(order))
    first -= ptr[batch]
    first *= width[batch]
    first += starts[batch]
    code = np.empty_like(first)
    code[order] = first
    del batch, order, first
    # every (record, cadence) of a record's set gets one entry, record-major then in bit order:
    # the leaves fill the entries, and each pair reads its own, found from its record's set
    rec_mask = np.bitwise_or.reduce(part.pieces, axis=1)[part.record_type]
    rec_start = np.zeros(len(rec_mask) + 1, dtype=np.int64)
    np.cumsum(np.bitwise_count(rec_mask), out=rec_start[1:])
    entry = _entries(leaves.mask, rec_mask[leaves.rec], rec_start[leaves.rec], code,
                     int(rec_start[-1]))
    del code
    # a pair's entry: its record's start + the cadences of the set below its own, counted on
    # the set shifted so that its cadence is the top bit (which must be set)
    held = rec_mask[pair_r]
    held <<= _TO_TOP[pair_c]
    if len(held) and held.min() < _TOP:  # cannot happen: sets are made from the pairs
        raise RuntimeError("planner: a pair is not covered by any batch")
    at = (rec_start - 1)[pair_r]
    at += np.bitwise_count(held)
    got = held.view(np.int64)  # held is spent: its memory takes the entries
    np.take(entry, at, out=got, mode="clip")  # clip: in range anyway, and no buffering
    return _Built(pair_pos, got, starts)


#: per cadence, the left shift that makes it the top bit of a mask
_TO_TOP = (_MASK_BITS - 1 - np.arange(_MASK_BITS)).astype(np.uint8)
_TOP = np.uint64(1) << np.uint64(_MASK_BITS - 1)


def _entries(leaf_mask: np.ndarray, held: np.ndarray, start: np.ndarray, code: np.ndarray,
             n: int) -> np.ndarray:
    """Per (record, cadence), record-major: code + k of the leaf holding it as its k-th cadence;
    ``held`` and ``start`` are the leaf's record's set and first entry. Leaves come level by
    level, biggest sets first, so those with a k-th cadence are a prefix. Uses up leaf_mask."""
    entry = np.full(n, -1, dtype=np.int64)
    rest = leaf_mask
    low = np.empty_like(rest)
    where = np.empty_like(start)
    n_with = np.cumsum(np.bincount(np.bitwise_count(rest), minlength=_MASK_BITS + 1)[::-1])
    for k in range(_MASK_BITS):
        m = int(n_with[_MASK_BITS - k - 1])  # leaves with more than k cadences
        if not m:
            break
        r, lo, w = rest[:m], low[:m], where[:m]
        np.invert(r, out=lo)  # lowest bit: r & (~r + 1)
        lo += np.uint64(1)
        lo &= r
        r ^= lo
        lo -= np.uint64(1)
        lo &= held[:m]  # the record's cadences below this one
        np.add(start[:m], np.bitwise_count(lo), out=w)
        entry[w] = code[:m] + k
    if n and entry.min() < 0:  # cannot happen: a record's leaves partition its set
        raise RuntimeError("planner: a pair is not covered by any batch")
    return entry


def _by_batch(batch: np.ndarray, rec: np.ndarray, n_batches: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(batch, record, leaf index) of the leaves by batch, each batch's in the order the replay
    made them: a stable grouping by radix, not a sort of ten million keys."""
    order = stable_order(batch, n_batches)
    return batch[order], rec[order], order


def _ranks(key: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each item's index among the items of its key (0..len(counts)-1), in array order;
    ``counts``: how many items each key has."""
    order = stable_order(key, len(counts))
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    within = np.arange(len(key))
    within -= np.repeat(starts, counts)  # in key order the keys are runs: no gather of them
    rank = np.empty(len(key), dtype=np.int64)
    rank[order] = within
    return rank


def _leaves(part: _Part) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Replay the chosen search on records: (record, group, batch) of every final piece, and the
    set of each group (groups of every level, numbered from the biggest sets down).

    Pieces are looked up among their level's sets once per record type, and split pieces once
    per set, never per record."""
    cap = MAX_RECORDS_PER_CALL
    sizes = range(MAX_CADENCES_PER_CALL, 0, -1)
    levels = {s: part.search.levels[s] for s in sizes}
    group0 = dict(zip(sizes, np.cumsum([0] + [len(lv.masks) for lv in levels.values()]),
                      strict=False))
    # pieces waiting at each level, in the search's order: records and their set's index
    pend: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {s: ([], []) for s in sizes}
    group_masks = np.concatenate([lv.masks for lv in levels.values()])
    # every set a piece can have — the records' own, and each level's split halves — looked
    # up at once among all levels' sets (a set's size says its level): (size, index in level)
    first = np.zeros(_MASK_BITS + 1, dtype=np.int64)
    first[list(group0)] = list(group0.values())
    kids = [child for lv in levels.values() for child in (lv.masks ^ lv.peel, lv.peel)]
    query = np.concatenate([part.pieces.T.ravel(), *kids])
    size = np.bitwise_count(query)
    group = index_in(group_masks, query)
    group -= first[size]
    group[size == 0] = 0
    if (group < 0).any():
        raise RuntimeError("planner: replay diverged from the search")  # internal invariant
    n_types = part.pieces.size
    type_size = size[:n_types].reshape(part.pieces.shape[::-1])
    type_group = group[:n_types].reshape(part.pieces.shape[::-1])
    bounds = np.cumsum([n_types] + [len(k) for k in kids]).tolist()
    kid_groups = {s: [(size[bounds[2 * i + j]:bounds[2 * i + j + 1]],
                       group[bounds[2 * i + j]:bounds[2 * i + j + 1]]) for j in (0, 1)]
                  for i, s in enumerate(levels)}

    def add(rec: np.ndarray | None, size: np.ndarray, group: np.ndarray, below: int) -> None:
        by_size = np.argsort(size, kind="stable")  # radix: one pass over bytes
        end = np.cumsum(np.bincount(size, minlength=below)[:below])
        for s in range(1, below):
            sel = by_size[end[s - 1]:end[s]]
            pend[s][0].append(sel if rec is None else rec[sel])
            pend[s][1].append(group[sel])

    for j in range(part.pieces.shape[1]):  # the records themselves (rec None), slot by slot
        add(None, type_size[j][part.record_type], type_group[j][part.record_type],
            MAX_CADENCES_PER_CALL + 1)
    out_rec, out_group, out_batch = [], [], []
    for s, lv in levels.items():
        rec = np.concatenate(pend[s][0]) if pend[s][0] else np.zeros(0, np.int64)
        g = np.concatenate(pend[s][1]) if pend[s][1] else np.zeros(0, np.int64)
        if not len(rec):
            continue
        if not np.array_equal(np.bincount(g, minlength=len(lv.masks)), lv.counts):
            raise RuntimeError("planner: replay diverged from the search")  # internal invariant
        # a set's records fill its n_full calls of 100 in order, the rest its remainder's call
        # (if kept): a record's call is min(its rank // 100, n_full) after the set's first
        n_full = lv.counts // cap
        full = n_full[g]
        if n_full.any():
            has = n_full > 0
            n_has = int(has.sum())  # sets without a full call share the last key
            key = np.where(has, np.cumsum(has) - 1, n_has)[g]
            call = _ranks(key, np.append(lv.counts[has], len(g) - lv.counts[has].sum()))
            call //= cap
            np.minimum(call, full, out=call)
        else:
            call = full
        final = np.flatnonzero((call < full) | lv.keep[g])
        out_rec.append(rec[final])
        out_group.append(g[final] + group0[s])
        out_batch.append(lv.base[g[final]] + call[final])
        moved = np.flatnonzero((call >= full) & ~lv.keep[g])
        if len(moved):  # split: the rest and the peeled cadence wait at smaller sizes
            rec, g = rec[moved], g[moved]
            for child_size, child_group in kid_groups[s]:
                add(rec, child_size[g], child_group[g], s)
    return (np.concatenate(out_rec), np.concatenate(out_group), np.concatenate(out_batch),
            group_masks)


# --------------------------------------------------------------------------- entry points


def plan_codes(module_codes: np.ndarray, module_names: Sequence[str] | pa.Array,
               record_codes: np.ndarray, record_ids: _Ids | Callable[[], _Ids],
               cadence_codes: np.ndarray, cadence_ids: _Ids, *,
               text_per_pair: bool = False, cadence_modules: np.ndarray | None = None,
               record_masks: np.ndarray | None = None) -> Plan:
    """Plan from integer codes (e.g. the input reader's): ``record_ids[record_codes[i]]`` is pair
    i's record id, and so on. Dictionaries must hold distinct values; the triples of codes must be
    distinct. A record id under two modules is two records.

    With ``text_per_pair``, ``record_ids`` and ``cadence_ids`` are instead the pairs' own columns
    (``record_ids[i]`` is pair i's id) and a code's text is that of its first pair: a reader that
    already hashed the ids hands over its codes and columns, and nothing is hashed twice.

    A reader whose cadence codes are already per module may say so (``cadence_modules``: the
    module of each cadence code) and hand over ``record_masks`` (per record code, the OR of
    ``1 << cadence code`` of its pairs; only with 64 cadence codes or fewer): then the plan
    makes no pass over the pairs at all. With the masks, ``record_ids`` may be a function that
    returns them: the text of the records is then only made when batches are built."""
    names = [str(x) for x in (module_names.to_pylist() if isinstance(module_names, pa.Array)
                              else module_names)]
    lazy = callable(record_ids) and record_masks is not None and not text_per_pair
    if callable(record_ids) and not lazy:
        record_ids = record_ids()
    rec_ids = record_ids if lazy else _id_column(record_ids)
    cad_ids = _id_column(cadence_ids)
    mod, rec, cad = (np.asarray(x) for x in (module_codes, record_codes, cadence_codes))
    n = len(rec)
    if not len(mod) == n == len(cad):
        raise ValueError("module, record and cadence columns differ in length")
    record_rep = None
    if text_per_pair:
        if not len(rec_ids) == n == len(cad_ids):
            raise ValueError("per-pair id columns differ in length from the codes")
        record_rep = _first_pair_of_code(rec)
        cad_ids = cad_ids.take(arrow_of(_first_pair_of_code(cad)))
    n_rec = len(record_masks) if lazy else (  # type: ignore[arg-type]
        len(rec_ids) if record_rep is None else len(record_rep))
    parts: list[_Part] = []
    stats: dict[str, ModulePlanStats] = {}
    if n:
        slots = _Slots.of(mod, cad, len(cad_ids), len(names), cadence_modules)
        if slots.n <= _MASK_BITS:
            masks = record_masks if record_masks is not None and slots.same_codes else None
            parts, stats = _plan_by_masks(names, rec, n_rec, slots, masks)
        else:
            parts, stats = _plan_by_blocks(names, mod, rec, n_rec, cad, len(cad_ids))
    offsets = tuple(np.concatenate(([0], np.cumsum([_n_batches(p) for p in parts])[:-1]))
                    .astype(int).tolist()) if parts else ()
    return Plan(n, stats, _Parts(parts), offsets, names, rec_ids, cad_ids, record_rep)


@dataclass(frozen=True, slots=True)
class _Slots:
    """Cadence *slots*: one per (module, cadence) that has pairs, numbered module by module, so
    that a module's cadences are a contiguous run of bits in a record's mask."""

    of_pair: np.ndarray  # slot of each pair
    cadence: np.ndarray  # slot → cadence code
    module: np.ndarray  # slot → module code (non-decreasing)
    same_codes: bool  # slots are the caller's cadence codes

    @property
    def n(self) -> int:
        return len(self.cadence)

    @staticmethod
    def of(mod: np.ndarray, cad: np.ndarray, n_cad: int, n_mod: int,
           cadence_modules: np.ndarray | None) -> _Slots:
        if cadence_modules is not None or n_mod == 1:
            of_cad = np.zeros(n_cad, np.int64) if cadence_modules is None else cadence_modules
            if len(of_cad) < 2 or bool(np.all(of_cad[1:] >= of_cad[:-1])):
                return _Slots(cad, np.arange(n_cad), np.asarray(of_cad), True)
        key = mod.astype(np.int64) * n_cad + cad
        present = np.zeros(n_mod * n_cad, dtype=bool)
        present[key] = True
        slot_of_key = np.cumsum(present, dtype=np.int64) - 1
        used = np.flatnonzero(present)
        return _Slots(slot_of_key[key], used % n_cad, used // n_cad, False)


def _plan_by_masks(names: list[str], rec: np.ndarray, n_rec: int, slots: _Slots,
                   masks: np.ndarray | None
                   ) -> tuple[list[_Part], dict[str, ModulePlanStats]]:
    """Every module at once (64 slots or fewer): one mask per record code, one hashing of the
    masks; each module then works on its distinct cadence sets, never on pairs."""
    if masks is None:
        masks = _record_masks(rec, slots.of_pair, n_rec, slots.n)
    with ThreadPoolExecutor(1) as pool:
        gtype, gmask = encode_many(masks, pool)
    gcount = np.bincount(gtype, minlength=len(gmask))
    bounds = np.searchsorted(slots.module, np.arange(len(names) + 1))
    parts: list[_Part] = []
    stats: dict[str, ModulePlanStats] = {}
    known: dict[bytes, _Search] = {}
    for m in range(len(names)):
        lo, hi = int(bounds[m]), int(bounds[m + 1])
        own = (gmask >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        has = own != 0
        if not has.any():
            continue
        if hi - lo == slots.n and has.all():  # the only module: its sets are the masks'
            record_type, tmask, tcount, recs = gtype, gmask, gcount, np.arange(n_rec)
        else:
            ftype, tmask = encode(own[has])
            tcount = np.bincount(ftype, weights=gcount[has]).astype(np.int64)
            type_of = np.full(len(gmask), -1, dtype=np.int64)
            type_of[has] = ftype
            recs = np.arange(n_rec) if has.all() else np.flatnonzero(has[gtype])
            record_type = type_of[gtype[recs]]
        tmask, bits = _squeeze(tmask, hi - lo)
        cad_count = _bit_counts(tmask, tcount, len(bits))
        part = _solve_types(m, _mask_pairs(rec, n_rec, slots, recs, bits + lo, len(names) > 1),
                            record_type, tmask, tcount, cad_count, recs,
                            slots.cadence[bits + lo], known)
        parts.append(part)
        size = _popcount(tmask)
        stats[names[m]] = _stats(names[m], [part], int((size * tcount).sum()), len(recs),
                                 int((-(-size // MAX_CADENCES_PER_CALL) * tcount).sum()),
                                 cad_count)
    return parts, stats


def _squeeze(tmask: np.ndarray, n_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop the bits no set uses (cadences left without pairs): (masks, old bit of each bit)."""
    used = int(np.bitwise_or.reduce(tmask)) if len(tmask) else 0
    bits = np.array([b for b in range(n_bits) if used >> b & 1], dtype=np.int64)
    if len(bits) == n_bits:
        return tmask, bits
    out = np.zeros_like(tmask)
    one = np.uint64(1)
    for new, old in enumerate(bits.tolist()):
        out |= ((tmask >> np.uint64(old)) & one) << np.uint64(new)
    return out, bits


def _mask_pairs(rec: np.ndarray, n_rec: int, slots: _Slots, recs: np.ndarray,
                slot_of_bit: np.ndarray, several_modules: bool) -> _PairSource:
    """The part's pairs, found again only when batches are built."""
    def pairs() -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        pos = None
        r, c = rec, slots.of_pair
        if several_modules:
            pos = np.flatnonzero((c >= slot_of_bit[0]) & (c <= slot_of_bit[-1]))
            r, c = r[pos], c[pos]
        # the only module's records and cadences are mostly numbered as the part's already
        if len(recs) != n_rec:
            local_rec = np.full(n_rec, -1, dtype=np.int64)
            local_rec[recs] = np.arange(len(recs))
            r = local_rec[r]
        if not np.array_equal(slot_of_bit, np.arange(slots.n)):
            local_cad = np.full(slots.n, -1, dtype=np.int64)
            local_cad[slot_of_bit] = np.arange(len(slot_of_bit))
            c = local_cad[c]
        return pos, r, c
    return pairs


def _plan_by_blocks(names: list[str], mod: np.ndarray, rec: np.ndarray, n_rec: int,
                    cad: np.ndarray, n_cad: int
                    ) -> tuple[list[_Part | _LazyPart], dict[str, ModulePlanStats]]:
    """Module by module, in blocks of 64 cadences (a call never mixes two blocks); a module
    with more than ``_BLOCKS_MAX`` blocks by cadences that share their records instead."""
    mod, rec, cad = (np.asarray(x, dtype=np.int64) for x in (mod, rec, cad))
    if len(names) == 1:
        groups = [(0, None)]
    else:
        key = mod.astype(np.uint16) if len(names) <= np.iinfo(np.uint16).max else mod
        order = np.argsort(key, kind="stable")
        bounds = np.searchsorted(mod[order], np.arange(len(names) + 1))
        groups = [(m, order[bounds[m]:bounds[m + 1]]) for m in range(len(names))
                  if bounds[m + 1] > bounds[m]]
    parts: list[_Part | _LazyPart] = []
    stats: dict[str, ModulePlanStats] = {}
    known: dict[bytes, _Search] = {}
    for m, pos in groups:
        r_glob = rec if pos is None else rec[pos]
        c_glob = cad if pos is None else cad[pos]
        c_local, cad_global = _dense(c_glob, n_cad)
        r_local, rec_global = _dense(r_glob, n_rec)
        k = np.bincount(r_local)
        if len(cad_global) > _BLOCK_CADENCES * _BLOCKS_MAX:
            lazy, batches = _plan_by_signatures(m, pos, r_local, rec_global, c_local, cad_global)
            parts.extend(lazy)
            cad_count = np.bincount(c_local, minlength=len(cad_global))
            stats[names[m]] = ModulePlanStats(
                names[m], len(r_glob), len(k), len(cad_global), batches,
                _lower_bound(len(r_glob), int((-(-k // MAX_CADENCES_PER_CALL)).sum()),
                             cad_count),
                int((-(-cad_count // MAX_RECORDS_PER_CALL)).sum()), _SIGNATURES)
            continue
        module_parts = []
        for lo in range(0, len(cad_global), _BLOCK_CADENCES):
            if len(cad_global) <= _MASK_BITS:
                module_parts.append(_solve(m, pos, r_local, rec_global, c_local, cad_global,
                                           known))
                break
            hi = lo + _BLOCK_CADENCES
            sel = (c_local >= lo) & (c_local < hi)
            r_block, rec_block = _dense(r_local[sel], len(rec_global))
            module_parts.append(_solve(
                m, np.flatnonzero(sel) if pos is None else pos[sel], r_block,
                rec_global[rec_block], c_local[sel] - lo, cad_global[lo:hi], known))
        parts.extend(module_parts)
        stats[names[m]] = _stats(names[m], module_parts, len(r_glob), len(k),
                                 int((-(-k // MAX_CADENCES_PER_CALL)).sum()),
                                 np.bincount(c_local, minlength=len(cad_global)))
    return parts, stats


def _id_column(values: object) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    return pa.array(list(values), pa.string())  # type: ignore[call-overload]


def _first_pair_of_code(codes: np.ndarray) -> np.ndarray:
    first = np.zeros(int(codes.max()) + 1 if len(codes) else 0, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)  # the last write is the first pair
    return first


def plan_pairs(module: object, record_id: object, cadence_id: object) -> Plan:
    """Plan valid, distinct (module, record_id, cadence_id) pairs given as three equal-length
    columns (pyarrow arrays, chunked arrays or lists of str)."""
    with ThreadPoolExecutor(max_workers=2) as pool:  # pyarrow hashing releases the GIL
        rec_job = pool.submit(_encode, record_id)
        cad = _encode(cadence_id)
        mod = _encode(module)
        rec = rec_job.result()
    return plan_codes(mod[0], _texts(mod[1]), rec[0], rec[1], cad[0], cad[1])


def plan_batches(pairs: Sequence[tuple[str, str, str]]) -> list[Batch]:
    """Convenience for small inputs: (module, record_id, cadence_id) tuples → batches."""
    if not pairs:
        return []
    module, record, cadence = (list(col) for col in zip(*pairs, strict=True))
    return list(plan_pairs(module, record, cadence).iter_batches())


# --------------------------------------------------------------------------- many cadences

#: a module with more blocks of 64 cadences than this is planned by signatures: each block is a
#: search of its own (milliseconds), fine for an org's few hundred cadences, not for millions
_BLOCKS_MAX = 64
_SIGNATURES = "cadences with the same records, 5 to a call"
#: chunks of ≤5 cadences a part holds (a part has at most 64 cadence bits)
_CHUNKS_PER_PART = _MASK_BITS // MAX_CADENCES_PER_CALL


@dataclass(frozen=True, slots=True)
class _LazyPart:
    """A part whose batch count is known and whose arrays are made when batches are built."""

    n_batches: int
    make: Callable[[], _Part]


def _n_batches(part: _Part | _LazyPart) -> int:
    return part.n_batches if isinstance(part, _LazyPart) else part.search.n_batches


class _Parts(Sequence):
    """The plan's parts, each lazy one made on first use (``batcher plan`` makes none)."""

    def __init__(self, parts: Sequence[_Part | _LazyPart]) -> None:
        self._parts = list(parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        part = self._parts[i]
        if isinstance(part, _LazyPart):
            part = self._parts[i] = part.make()
        return part


@dataclass(frozen=True)
class _Signatures:
    """One module's cadences grouped by their exact set of records (its *signature*), cut
    into chunks of ≤5 cadences; a chunk's calls are its signature's records, 100 a call."""

    cad_order: np.ndarray  # local cadences, chunk by chunk
    chunk_start: np.ndarray  # chunk k's cadences: cad_order[chunk_start[k]:chunk_start[k + 1]]
    chunk_records: Callable[[int], np.ndarray]  # chunk → its local records, ascending
    chunk_calls: np.ndarray  # calls of each chunk


def _signatures(r: np.ndarray, c: np.ndarray, n_rec: int, n_cad: int) -> _Signatures:
    """Local cadences (``c``, 0..n_cad-1) grouped by signature and cut into chunks.

    A cadence's signature is its sorted local records as bytes, hashed exactly by Arrow (no
    hash of ours: two cadences share calls only if their record lists are equal)."""
    key = np.sort(c.astype(np.int64) * n_rec + r)  # values only: numpy's fastest sort
    rec_sorted = (key % n_rec).astype(np.int32)
    start = np.zeros(n_cad + 1, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=n_cad), out=start[1:])
    offsets = start * 4
    binary = pa.large_binary() if offsets[-1] >= 1 << 31 else pa.binary()
    sig_bytes = pa.Array.from_buffers(binary, n_cad, [
        None, pa.py_buffer(offsets.astype(np.int64 if binary == pa.large_binary() else np.int32)),
        pa.py_buffer(rec_sorted)])
    enc = pc.dictionary_encode(sig_bytes)
    sig = numpy_of(enc.indices).astype(np.int64)
    n_sig = len(enc.dictionary)
    cad_order = np.argsort(sig, kind="stable")  # by signature, cadences in code order
    n_of_sig = np.bincount(sig, minlength=n_sig)
    rank = np.arange(n_cad) - np.repeat(np.cumsum(n_of_sig) - n_of_sig, n_of_sig)
    new_chunk = rank % MAX_CADENCES_PER_CALL == 0
    chunk_start = np.append(np.flatnonzero(new_chunk), n_cad)
    lead = cad_order[chunk_start[:-1]]  # a cadence of each chunk: its records are the chunk's
    size = start[lead + 1] - start[lead]
    calls = -(-size // MAX_RECORDS_PER_CALL)
    return _Signatures(cad_order, chunk_start,
                       lambda k: rec_sorted[start[lead[k]]:start[lead[k] + 1]], calls)


def _plan_by_signatures(module: int, pos: np.ndarray | None, r: np.ndarray,
                        rec_global: np.ndarray, c: np.ndarray, cad_global: np.ndarray
                        ) -> tuple[list[_LazyPart], int]:
    """(parts of ≤12 chunks, made when built; batches of the module). Cadences that hold the
    same records share calls, 5 to a call: with millions of cadences (ids that are records,
    most likely) this is linear in the pairs, where blocks of 64 cadences take minutes."""
    sigs = _signatures(r, c, len(rec_global), len(cad_global))
    n_chunks = len(sigs.chunk_calls)
    bounds = list(range(0, n_chunks, _CHUNKS_PER_PART)) + [n_chunks]
    part_calls = np.add.reduceat(sigs.chunk_calls, bounds[:-1])
    part_of_cad = np.empty(len(cad_global), dtype=np.int64)
    part_of_cad[sigs.cad_order] = np.repeat(np.arange(len(bounds) - 1),
                                            np.diff(sigs.chunk_start[bounds]))
    pairs_of = _PairsByPart(pos, r, c, part_of_cad, len(bounds) - 1)

    def maker(p: int) -> Callable[[], _Part]:
        return lambda: _signature_part(module, sigs, bounds[p], bounds[p + 1], rec_global,
                                       cad_global, pairs_of.source(p))

    parts = [_LazyPart(int(n), maker(p)) for p, n in enumerate(part_calls.tolist())]
    return parts, int(part_calls.sum())


class _PairsByPart:
    """The module's pairs grouped by part, grouped once, on the first part built."""

    def __init__(self, pos: np.ndarray | None, r: np.ndarray, c: np.ndarray,
                 part_of_cad: np.ndarray, n_parts: int) -> None:
        self._args = (pos, r, c, part_of_cad, n_parts)
        self._grouped: tuple[np.ndarray, np.ndarray] | None = None

    def source(self, p: int) -> _PairSource:
        def pairs() -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
            pos, r, c, part_of_cad, n_parts = self._args
            if self._grouped is None:
                part = part_of_cad[c]
                order = np.argsort(part, kind="stable")
                bounds = np.searchsorted(part[order], np.arange(n_parts + 1))
                self._grouped = order, bounds
            order, bounds = self._grouped
            at = order[bounds[p]:bounds[p + 1]]
            return (at if pos is None else pos[at]), r[at], c[at]
        return pairs


def _signature_part(module: int, sigs: _Signatures, k0: int, k1: int, rec_global: np.ndarray,
                    cad_global: np.ndarray, pairs: _PairSource) -> _Part:
    """Chunks k0..k1-1 as a part: each chunk is one piece (its bits), held by its records;
    the search keeps every remainder (a chunk's calls are ⌈records / 100⌉)."""
    cads = sigs.cad_order[sigs.chunk_start[k0]:sigs.chunk_start[k1]]
    size = np.diff(sigs.chunk_start[k0:k1 + 1])
    first_bit = np.concatenate(([0], np.cumsum(size)[:-1]))
    chunk_mask = ((np.uint64(1) << size.astype(np.uint64)) - np.uint64(1)) \
        << first_bit.astype(np.uint64)
    recs = [sigs.chunk_records(k) for k in range(k0, k1)]
    held_rec = np.concatenate(recs).astype(np.int64)
    held_chunk = np.repeat(np.arange(k1 - k0), [len(x) for x in recs])
    local_recs, rec_of = np.unique(held_rec, return_inverse=True)
    masks = np.zeros(len(local_recs), dtype=np.uint64)
    np.bitwise_or.at(masks, rec_of, chunk_mask[held_chunk])
    tmask, record_type = np.unique(masks, return_inverse=True)
    pieces = np.where((tmask[:, None] & chunk_mask[None, :]) != 0, chunk_mask[None, :],
                      np.uint64(0))
    counts = np.array([len(x) for x in recs], dtype=np.int64)
    levels: dict[int, _Level] = {}
    total = 0
    for s in range(MAX_CADENCES_PER_CALL, 0, -1):
        at = np.flatnonzero(size == s)
        at = at[np.argsort(chunk_mask[at])]
        n_calls = -(-counts[at] // MAX_RECORDS_PER_CALL)
        base = total + np.concatenate(([0], np.cumsum(n_calls)[:-1])).astype(np.int64)
        total += int(n_calls.sum())
        levels[s] = _Level(chunk_mask[at], counts[at], counts[at] % MAX_RECORDS_PER_CALL > 0,
                           np.zeros(len(at), dtype=np.uint64), base)
    # a pair's local indices by binary search among the part's few cadences and records: a
    # lookup table as long as the module's cadences, kept by each of tens of thousands of
    # parts (a million cadences: swapped columns), took tens of gigabytes
    cad_order = np.argsort(cads)
    cads_sorted = cads[cad_order]

    def local_pairs() -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        where, r, c = pairs()
        return (where, np.searchsorted(local_recs, r),
                cad_order[np.searchsorted(cads_sorted, c)])

    return _Part(module, local_pairs, rec_global[local_recs], cad_global[cads],
                 record_type.astype(np.int64), pieces, _Search(0, total, levels))
