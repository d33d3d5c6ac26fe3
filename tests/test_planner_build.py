"""Building batch membership (``planner._batches_of`` then ``_pairs_of``): the vectorised build
gives exactly what the straightforward replay it replaced gave, field for field, on random inputs
and on every shape."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher import planner
from batcher.models import MAX_CADENCES_PER_CALL, MAX_RECORDS_PER_CALL
from batcher.planner import plan_pairs

FIELDS = ("pair_pos", "pair_batch", "pair_rank", "ptr", "records", "masks")


def reference_leaves(part: planner._Part) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The replay as first written: per record, concatenating and sorting level by level."""
    cap = MAX_RECORDS_PER_CALL
    pend: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {
        s: ([], []) for s in range(1, MAX_CADENCES_PER_CALL + 1)}
    for j in range(part.pieces.shape[1]):
        pm = part.pieces[part.record_type, j]
        sel = np.flatnonzero(pm)
        pm = pm[sel]
        size = planner._popcount(pm)
        for s in range(1, MAX_CADENCES_PER_CALL + 1):
            pend[s][0].append(sel[size == s])
            pend[s][1].append(pm[size == s])
    out_rec, out_mask, out_batch = [], [], []
    for s in range(MAX_CADENCES_PER_CALL, 0, -1):
        lv = part.search.levels[s]
        rec = np.concatenate(pend[s][0]) if pend[s][0] else np.zeros(0, np.int64)
        mask = np.concatenate(pend[s][1]) if pend[s][1] else np.zeros(0, np.uint64)
        if not len(rec):
            continue
        g = np.searchsorted(lv.masks, mask)
        assert np.array_equal(np.bincount(g, minlength=len(lv.masks)), lv.counts)
        order = np.argsort(g, kind="stable")
        starts = np.concatenate(([0], np.cumsum(lv.counts)[:-1]))
        rank = np.empty(len(g), dtype=np.int64)
        rank[order] = np.arange(len(g)) - starts[g[order]]
        n_full = lv.counts[g] // cap
        in_full = rank < n_full * cap
        final = in_full | lv.keep[g]
        out_rec.append(rec[final])
        out_mask.append(mask[final])
        out_batch.append(lv.base[g[final]] + np.where(in_full, rank // cap, n_full)[final])
        moved = ~final
        if moved.any():
            peel = lv.peel[g[moved]]
            for child in (mask[moved] ^ peel, peel):
                child_size = planner._popcount(child)
                for k in range(1, s):
                    pend[k][0].append(rec[moved][child_size == k])
                    pend[k][1].append(child[child_size == k])
    return np.concatenate(out_rec), np.concatenate(out_mask), np.concatenate(out_batch)


def reference_build(part: planner._Part) -> dict[str, np.ndarray | None]:
    """Batch membership as first written, but for the order of a batch's records (the replay's,
    no longer ascending): each pair's leaf found one leaf of its record at a time."""
    pair_pos, pair_r, pair_c = part.pairs()
    leaf_rec, leaf_mask, leaf_batch = reference_leaves(part)
    n_batches = part.search.n_batches
    order = np.argsort(leaf_batch, kind="stable")
    ptr = np.zeros(n_batches + 1, dtype=np.int64)
    np.cumsum(np.bincount(leaf_batch, minlength=n_batches), out=ptr[1:])
    masks = np.zeros(n_batches, dtype=np.uint64)
    masks[leaf_batch] = leaf_mask
    by_rec = np.argsort(leaf_rec, kind="stable")
    n_leaf = np.bincount(leaf_rec, minlength=len(part.rec_global))
    start = np.concatenate(([0], np.cumsum(n_leaf)[:-1]))
    pair_leaf = np.full(len(pair_r), -1, dtype=np.int64)
    c = pair_c.astype(np.uint64)
    for j in range(int(n_leaf.max(initial=0))):
        todo = np.flatnonzero((pair_leaf < 0) & (n_leaf[pair_r] > j))
        li = by_rec[start[pair_r[todo]] + j]
        hit = ((leaf_mask[li] >> c[todo]) & np.uint64(1)) == 1
        pair_leaf[todo[hit]] = li[hit]
    assert (pair_leaf >= 0).all()
    leaf_place = np.empty(len(order), dtype=np.int64)
    leaf_place[order] = np.arange(len(order)) - ptr[leaf_batch[order]]
    bm = leaf_mask[pair_leaf]
    below = bm & ((np.uint64(1) << c) - np.uint64(1))
    pair_rank = leaf_place[pair_leaf] * planner._popcount(bm) + planner._popcount(below)
    return dict(zip(FIELDS, (pair_pos, leaf_batch[pair_leaf], pair_rank, ptr, leaf_rec[order],
                             masks), strict=True))


def assert_builds_match(plan: planner.Plan) -> None:
    parts = list(plan._parts)
    assert len(parts) == len(plan._build()) == len(plan._batches())
    for part, built, made in zip(parts, plan._build(), plan._batches(), strict=True):
        want = reference_build(part)
        for field in FIELDS:
            got, exp = getattr(built if field.startswith("pair_") else made, field), want[field]
            if exp is None:
                assert got is None, field
            else:
                assert got.dtype == exp.dtype, field
                assert np.array_equal(got, exp), field


def random_plan(seed: int, n_rec: int, n_cad: int, per_record: float, modules: int = 1,
                uniform: bool = False) -> planner.Plan:
    rng = np.random.default_rng(seed)
    n = max(1, int(n_rec * per_record))
    r = rng.integers(0, n_rec, n)
    c = rng.integers(0, n_cad, n) if uniform else \
        (rng.pareto(1.0, n) * 3).astype(np.int64) % n_cad  # uneven popularity, like real ones
    m = rng.integers(0, modules, n)
    key = np.unique((m * n_rec + r) * n_cad + c)
    rng.shuffle(key)
    c, r, m = key % n_cad, key // n_cad % n_rec, key // n_cad // n_rec
    return plan_pairs([f"M{x}" for x in m], [f"r{x}" for x in r], [f"c{x}" for x in c])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rec=st.integers(1, 3000), n_cad=st.integers(1, 80),
       per_record=st.floats(0.5, 12.0), modules=st.integers(1, 2))
def test_build_matches_the_reference_on_random_inputs(seed: int, n_rec: int, n_cad: int,
                                                      per_record: float, modules: int) -> None:
    assert_builds_match(random_plan(seed, n_rec, n_cad, per_record, modules))


@pytest.mark.parametrize(("n_rec", "n_cad", "per_record"), [
    (20_000, 40, 3.3),  # thousands of sets: full calls, kept and split remainders
    (5_000, 12, 9.0),  # sets over five cadences, cut into pieces
    (1_000, 150, 4.0),  # blocks of 64 cadences: parts with pair positions
])
def test_build_matches_the_reference_on_shapes(n_rec: int, n_cad: int, per_record: float
                                               ) -> None:
    assert_builds_match(random_plan(7, n_rec, n_cad, per_record, modules=2))


def test_build_matches_the_reference_on_parts_made_from_signatures() -> None:
    plan = random_plan(5, 200, 20_000, 60.0, uniform=True)  # more than 64 blocks of cadences
    assert any(isinstance(p, planner._LazyPart) for p in plan._parts._parts)
    assert_builds_match(plan)


def test_same_sets_fill_full_calls_and_keep_the_remainder() -> None:
    pairs = [("Leads", f"r{i}", f"c{k}") for i in range(250) for k in range(4)]
    plan = plan_pairs(*zip(*pairs, strict=True))
    assert_builds_match(plan)
    assert plan._batches()[0].ptr.tolist() == [0, 100, 200, 250]
    assert plan._build()[0].pair_rank.max() == 100 * 4 - 1


@pytest.mark.parametrize("n_keys", [50, 70_000, 1 << 33])
def test_by_batch_groups_leaves_by_batch_keeping_their_order(n_keys: int) -> None:
    # one radix pass for 16-bit batch numbers, two for 32-bit ones, numpy's own sort beyond
    rng = np.random.default_rng(3)
    batch = rng.integers(0, n_keys, 5000)
    batch[:2500] = batch[2500:]  # every batch of two leaves or more
    rec = rng.permutation(8000)[:5000]
    got_batch, got_rec, order = planner._by_batch(batch, rec, n_keys)
    want = np.argsort(batch, kind="stable")
    assert np.array_equal(order, want)
    assert np.array_equal(got_batch, batch[want]) and np.array_equal(got_rec, rec[want])


def test_ranks_count_earlier_items_of_the_same_key() -> None:
    key = np.array([2, 0, 2, 1, 0, 2, 3])
    rank = planner._ranks(key, np.bincount(key))
    assert rank.tolist() == [0, 0, 1, 0, 1, 2, 0]


def test_building_parts_made_from_signatures_takes_memory_of_the_pairs_not_parts_x_cadences(
        ) -> None:
    """Swapped columns give a module of a million cadences cut into tens of thousands of parts:
    each part built kept a lookup table as long as the module's cadences, and a 10M-row input
    took over 17 GB before its first call. Here 40,000 cadences (~670 parts) must build in a
    few megabytes, not hundreds."""
    import tracemalloc

    rng = np.random.default_rng(11)
    n = 120_000  # 40,000 "cadences" (record ids, swapped), 3 of 40 "records" each
    c = np.repeat(np.arange(40_000), 3)
    r = rng.integers(0, 40, n)
    key = np.unique(c * 40 + r)
    plan = plan_pairs(["Leads"] * len(key), [f"r{x}" for x in key % 40],
                      [f"c{x}" for x in key // 40])
    assert len(plan._parts) > 500
    tracemalloc.start()
    try:
        plan.pair_batch  # noqa: B018 (the build)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB to build {len(plan._parts)} parts"


def test_index_in_finds_every_key_and_marks_the_absent() -> None:
    from batcher.arrays import index_in

    rng = np.random.default_rng(4)
    table = rng.permutation(np.arange(1, 5000, dtype=np.uint64) * np.uint64(2**40))[:3000]
    keys = np.concatenate([table[rng.integers(0, 3000, 2000)], np.array([0, 7], np.uint64)])
    got = index_in(table, keys.reshape(2, -1))
    assert got.shape == (2, 1001)
    flat = got.ravel()
    assert np.array_equal(table[flat[:2000]], keys[:2000]) and flat[2000:].tolist() == [-1, -1]
