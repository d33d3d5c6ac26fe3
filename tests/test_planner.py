"""The planner: every invariant of a plan, on random inputs and on the shapes with a tight bound."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher import planner
from batcher.arrays import arrow_of, numpy_of, strings_of
from batcher.models import MAX_CADENCES_PER_CALL, MAX_RECORDS_PER_CALL, Batch
from batcher.planner import Plan, plan_batches, plan_codes, plan_pairs

Pair = tuple[str, str, str]


def rid(i: int) -> str:
    return str(5_540_230_000_001_798_647 + 7919 * i)  # 19 digits, above 2**53


def cid(i: int) -> str:
    return str(5_540_230_000_004_092_008 + 1000 * i)


def plan_of(pairs: list[Pair]) -> Plan:
    return plan_pairs([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs])


def check_plan(pairs: list[Pair], plan: Plan) -> list[Batch]:
    """Assert every invariant a user relies on; return the batches."""
    batches = list(plan.iter_batches())
    asked = set(pairs)
    assert len(asked) == len(pairs)
    assert plan.n_pairs == len(pairs)
    assert plan.n_batches == len(batches)
    covered: Counter[Pair] = Counter()
    batch_of: dict[Pair, int] = {}
    for index, b in enumerate(batches):
        assert b.batch_id == plan.batch_id_of(index)
        assert 1 <= len(b.cadence_ids) <= MAX_CADENCES_PER_CALL
        assert 1 <= len(b.record_ids) <= MAX_RECORDS_PER_CALL
        assert len(set(b.record_ids)) == len(b.record_ids)
        assert len(set(b.cadence_ids)) == len(b.cadence_ids)
        for r in b.record_ids:
            for c in b.cadence_ids:
                pair = (b.module, r, c)
                assert pair in asked, f"{b.batch_id} names {pair}, which was not asked for"
                covered[pair] += 1
                batch_of[pair] = index
    assert set(covered) == asked, "some pairs are in no batch"
    assert max(covered.values(), default=1) == 1, "some pair is in two batches"
    assert plan.pair_batch.dtype == np.int64
    assert plan.pair_batch.tolist() == [batch_of[p] for p in pairs]
    # the journal lays the rows out by placement: each row's place is its own pair's
    slots, starts = plan.placement()
    assert sorted(slots.tolist()) == list(range(len(pairs)))
    assert np.diff(starts).tolist() == [len(b.record_ids) * len(b.cadence_ids) for b in batches]
    for (_, r, c), place in zip(pairs, slots.tolist(), strict=True):
        b = batch_of[(_, r, c)]
        assert batches[b].pairs()[place - int(starts[b])] == (r, c)
    assert plan.lower_bound <= plan.n_batches <= plan.naive_batches
    assert plan.n_batches == sum(s.batches for s in plan.per_module.values())
    assert plan.lower_bound == sum(s.lower_bound for s in plan.per_module.values())
    assert plan.naive_batches == naive(pairs)
    for module, stats in plan.per_module.items():
        mine = [p for p in pairs if p[0] == module]
        assert stats.pairs == len(mine)
        assert stats.records == len({p[1] for p in mine})
        assert stats.cadences == len({p[2] for p in mine})
        assert stats.batches == sum(b.module == module for b in batches)
        assert stats.lower_bound <= stats.batches <= stats.naive_batches
    return batches


def naive(pairs: list[Pair]) -> int:
    per_cadence = Counter((m, c) for m, _, c in pairs)
    return sum(math.ceil(n / MAX_RECORDS_PER_CALL) for n in per_cadence.values())


@st.composite
def pair_lists(draw: st.DrawFn, max_cadences: int = 8) -> list[Pair]:
    n_modules = draw(st.integers(1, 3))
    n_cadences = draw(st.integers(1, max_cadences))
    n_records = draw(st.integers(1, 260))
    # a few dense "families" so that sets repeat, plus scattered pairs
    keys = draw(st.sets(st.tuples(st.integers(0, n_modules - 1), st.integers(0, n_records - 1),
                                  st.integers(0, n_cadences - 1)), max_size=400))
    family = draw(st.lists(st.integers(0, n_cadences - 1), max_size=6, unique=True))
    block = draw(st.integers(0, 250))
    keys |= {(0, r, c) for r in range(block) for c in family}
    pairs = [(f"Mod{m}" if m else "Leads", rid(r), cid(c)) for m, r, c in keys]
    random.Random(draw(st.integers(0, 2**16))).shuffle(pairs)
    return pairs


@settings(max_examples=120, deadline=None)
@given(pair_lists())
def test_every_invariant_holds_on_random_inputs(pairs: list[Pair]) -> None:
    check_plan(pairs, plan_of(pairs))


@settings(max_examples=25, deadline=None)
@given(pair_lists(max_cadences=140))
def test_modules_with_more_than_64_cadences_stay_exact(pairs: list[Pair]) -> None:
    check_plan(pairs, plan_of(pairs))


@settings(max_examples=30, deadline=None)
@given(pair_lists())
def test_same_input_gives_the_same_batches(pairs: list[Pair]) -> None:
    first = list(plan_of(pairs).iter_batches())
    again = plan_of(list(pairs))
    assert list(again.iter_batches()) == first
    assert plan_batches(pairs) == first


def test_records_inside_a_batch_keep_input_order() -> None:
    pairs = [("Leads", rid(i), cid(0)) for i in (5, 3, 9, 1)]
    (batch,) = plan_batches(pairs)
    assert batch.record_ids == (rid(5), rid(3), rid(9), rid(1))


# --------------------------------------------------------------------------- tight shapes


def test_everyone_in_one_cadence_reaches_the_bound() -> None:
    pairs = [("Leads", rid(i), cid(0)) for i in range(1234)]
    plan = plan_of(pairs)
    check_plan(pairs, plan)
    assert plan.n_batches == plan.lower_bound == 13


def test_everyone_in_the_same_four_cadences_reaches_the_bound() -> None:
    pairs = [("Contacts", rid(i), cid(c)) for i in range(1050) for c in range(4)]
    random.Random(4).shuffle(pairs)
    plan = plan_of(pairs)
    check_plan(pairs, plan)
    assert plan.n_batches == plan.lower_bound == 11
    assert plan.naive_batches == 44


def test_disjoint_blocks_of_100_records_sharing_5_cadences_reach_the_bound() -> None:
    pairs = [("Leads", rid(100 * blk + i), cid(5 * (blk % 3) + c))
             for blk in range(9) for i in range(100) for c in range(5)]
    random.Random(5).shuffle(pairs)
    plan = plan_of(pairs)
    batches = check_plan(pairs, plan)
    assert plan.n_batches == plan.lower_bound == 9
    assert all(len(b.record_ids) == 100 and len(b.cadence_ids) == 5 for b in batches)


def test_records_with_more_than_five_cadences_share_their_chunks() -> None:
    # 300 records in 7 cadences: 5 + 2 per record, 100 records a call
    pairs = [("Leads", rid(i), cid(c)) for i in range(300) for c in range(7)]
    plan = plan_of(pairs)
    check_plan(pairs, plan)
    assert plan.n_batches == plan.lower_bound == 6


def test_several_modules_are_planned_apart_and_reach_the_bound() -> None:
    pairs = [(m, rid(i), cid(c)) for m in ("Leads", "Contacts", "Partners__c")
             for i in range(200) for c in range(3)]
    plan = plan_of(pairs)
    batches = check_plan(pairs, plan)
    assert plan.n_batches == plan.lower_bound == 6
    assert set(plan.per_module) == {"Leads", "Contacts", "Partners__c"}
    assert all(plan.per_module[m].batches == 2 for m in plan.per_module)
    assert {b.module for b in batches} == set(plan.per_module)


def test_many_small_modules_of_alike_shapes_plan_as_each_alone() -> None:
    """A file of thousands of modules (a module column holding something else) planned module
    by module took a search on two threads each: 200k one-pair modules cost 6 minutes. Small
    searches are remembered by their pieces within a plan: a module whose pieces look alike
    but whose counts differ must still get its own plan, the same as when planned alone."""
    rng = random.Random(5)
    shapes = [(n_rec, cads) for n_rec in (1, 3, 99, 100, 101, 130)
              for cads in ((0,), (0, 1), (0, 1, 2, 3, 4, 5, 6))]
    pairs: list[Pair] = []
    for m in range(120):
        n_rec, cads = rng.choice(shapes)
        pairs += [(f"Mod{m}__c", rid(10_000 * m + i), cid(c)) for i in range(n_rec) for c in cads]
    batches = check_plan(pairs, plan_of(pairs))
    for m in range(120):
        own = [p for p in pairs if p[0] == f"Mod{m}__c"]
        alone = {(b.record_ids, b.cadence_ids) for b in plan_of(own).iter_batches()}
        assert {(b.record_ids, b.cadence_ids) for b in batches
                if b.module == f"Mod{m}__c"} == alone


def test_same_record_id_in_two_modules_is_two_records() -> None:
    pairs = [("Leads", rid(1), cid(0)), ("Contacts", rid(1), cid(0))]
    batches = check_plan(pairs, plan_of(pairs))
    assert sorted(b.module for b in batches) == ["Contacts", "Leads"]


def test_thin_remainders_are_split_into_pools_that_fill() -> None:
    # sets {A,B,C}×130, {A,B}×70, {C}×70: one call per set and remainder would be 4; splitting the
    # 30 left of {A,B,C} into {A,B} and {C} fills both to 100: 3 calls, the lower bound
    pairs = [("Leads", rid(i), cid(c)) for i in range(130) for c in (0, 1, 2)]
    pairs += [("Leads", rid(1000 + i), cid(c)) for i in range(70) for c in (0, 1)]
    pairs += [("Leads", rid(2000 + i), cid(2)) for i in range(70)]
    random.Random(7).shuffle(pairs)
    plan = plan_of(pairs)
    check_plan(pairs, plan)
    assert plan.n_batches == plan.lower_bound == 3
    assert plan.naive_batches == 6


# --------------------------------------------------------------------------- ids and inputs


def test_ids_stay_the_exact_strings_given() -> None:
    big = "9999999999999999999"  # above 2**63: would not survive int64 or float
    padded = "0554023000001798647"  # leading zero: not the same id as without it
    plain = "554023000001798647"
    pairs = [("Leads", big, cid(0)), ("Leads", padded, cid(0)), ("Leads", plain, cid(0)),
             ("Leads", plain, "0" + cid(0)[1:])]
    batches = check_plan(pairs, plan_of(pairs))
    seen = {r for b in batches for r in b.record_ids} | {c for b in batches for c in b.cadence_ids}
    assert {big, padded, plain, cid(0), "0" + cid(0)[1:]} <= seen
    assert all(isinstance(x, str) for b in batches for x in (*b.record_ids, *b.cadence_ids))


def test_arrow_inputs_chunked_and_dictionary_encoded() -> None:
    pairs = [("Leads", rid(i % 150), cid(i % 7)) for i in range(1050)]
    pairs = list(dict.fromkeys(pairs))
    mod, rec, cad = (list(col) for col in zip(*pairs, strict=True))
    half = len(pairs) // 2
    chunked = [pa.chunked_array([pa.array(col[:half]), pa.array(col[half:])])
               for col in (mod, rec, cad)]
    expected = list(plan_of(pairs).iter_batches())
    assert list(plan_pairs(*chunked).iter_batches()) == expected
    encoded = [pa.chunked_array([pa.array(col[:half]).dictionary_encode(),
                                 pa.array(col[half:]).dictionary_encode()])
               for col in (mod, rec, cad)]
    assert list(plan_pairs(*encoded).iter_batches()) == expected


def test_plan_codes_takes_the_readers_integer_codes() -> None:
    records = [rid(i) for i in range(120)]
    cadences = [cid(i) for i in range(3)]
    codes = [(r, c) for r in range(120) for c in range(3)]
    plan = plan_codes(np.zeros(len(codes), np.int64), ["Deals"],
                      np.array([r for r, _ in codes]), pa.array(records),
                      np.array([c for _, c in codes]), cadences)
    pairs = [("Deals", records[r], cadences[c]) for r, c in codes]
    check_plan(pairs, plan)
    assert plan.n_batches == 2


def test_batch_ids_are_strings_for_every_pair() -> None:
    pairs = [("Leads", rid(i), cid(i % 2)) for i in range(250)]
    plan = plan_of(pairs)
    ids = plan.batch_ids(plan.pair_batch).to_pylist()
    assert ids == [plan.batch_id_of(int(i)) for i in plan.pair_batch]
    assert plan.batch_ids().to_pylist() == [b.batch_id for b in plan.iter_batches()]
    with pytest.raises(IndexError):
        plan.batch_id_of(plan.n_batches)


def test_empty_input_plans_nothing() -> None:
    plan = plan_of([])
    assert (plan.n_pairs, plan.n_batches, plan.lower_bound, plan.naive_batches) == (0, 0, 0, 0)
    assert list(plan.iter_batches()) == [] and len(plan.pair_batch) == 0
    assert plan_batches([]) == []


def test_plan_codes_with_per_pair_columns_matches_plan_pairs() -> None:
    pairs = [(m, rid(r), cid(c)) for m in ("Leads", "Deals") for r in range(130)
             for c in range(r % 4 + 1)]
    random.Random(9).shuffle(pairs)
    mod, rec, cad = (pa.chunked_array([pa.array(list(col))]) for col in zip(*pairs, strict=True))
    codes = [np.unique(np.array(col.to_pylist()), return_inverse=True)[1]
             for col in (mod, rec, cad)]
    plan = plan_codes(codes[0], sorted({p[0] for p in pairs}), codes[1], rec, codes[2], cad,
                      text_per_pair=True)
    check_plan(pairs, plan)
    assert plan.n_batches == plan_of(pairs).n_batches


def _per_module_codes(pairs: list[Pair]) -> tuple[list[str], np.ndarray, list[str], np.ndarray,
                                                  list[str], np.ndarray, np.ndarray]:
    """Codes as the input reader hands them over: a cadence code per (module, cadence)."""
    names = list(dict.fromkeys(p[0] for p in pairs))
    records = list(dict.fromkeys(p[1] for p in pairs))
    slots = sorted(dict.fromkeys((names.index(p[0]), p[2]) for p in pairs))
    mod = np.array([names.index(p[0]) for p in pairs], dtype=np.int64)
    rec = np.array([records.index(p[1]) for p in pairs], dtype=np.int64)
    cad = np.array([slots.index((names.index(p[0]), p[2])) for p in pairs], dtype=np.int64)
    return (names, mod, records, rec, [c for _, c in slots], cad,
            np.array([m for m, _ in slots], dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(pair_lists(max_cadences=12))
def test_readers_masks_and_cadence_modules_give_the_same_plan(pairs: list[Pair]) -> None:
    names, mod, records, rec, cadences, cad, cad_module = _per_module_codes(pairs)
    masks = np.zeros(len(records), dtype=np.uint64)
    np.bitwise_or.at(masks, rec, np.left_shift(np.uint64(1), cad.astype(np.uint64)))
    plain = plan_codes(mod, names, rec, records, cad, cadences)
    handed = plan_codes(mod, names, rec, records, cad, cadences, cadence_modules=cad_module,
                        record_masks=masks)
    assert list(handed.iter_batches()) == list(plain.iter_batches())
    assert handed.per_module == plain.per_module
    check_plan(pairs, handed)
    asked: list[int] = []  # the record ids may come late: only batches need their text
    late = plan_codes(mod, names, rec, lambda: asked.append(1) or records, cad, cadences,
                      cadence_modules=cad_module, record_masks=masks)
    assert late.per_module == plain.per_module and not asked
    assert list(late.iter_batches()) == list(plain.iter_batches())
    assert asked == ([1] if pairs else [])


def test_cadence_modules_out_of_order_are_renumbered() -> None:
    pairs = [("Leads" if c % 2 else "Deals", rid(r), cid(c)) for r in range(150)
             for c in range(r % 5 + 1)]
    names, mod, records, rec, cadences, cad, cad_module = _per_module_codes(pairs)
    order = np.argsort(-np.arange(len(cadences)))  # modules no longer in runs of codes
    new_code = np.argsort(order)
    plan = plan_codes(mod, names, rec, records, new_code[cad], [cadences[i] for i in order],
                      cadence_modules=cad_module[order])
    check_plan(pairs, plan)


def test_cadence_codes_without_pairs_are_not_counted() -> None:
    """After the preflight drops a cadence, its code stays in the dictionary with no pairs."""
    pairs = [("Leads", rid(r), cid(c)) for r in range(230) for c in (0, 2, 5)]
    cadences = [cid(c) for c in range(6)]
    rec = np.repeat(np.arange(230), 3)
    cad = np.tile([0, 2, 5], 230)
    plan = plan_codes(np.zeros(len(pairs), np.int64), ["Leads"], rec, [rid(r) for r in range(230)],
                      cad, cadences, cadence_modules=np.zeros(6, np.int64))
    check_plan(pairs, plan)
    assert plan.per_module["Leads"].cadences == 3
    assert plan.n_batches == plan.lower_bound == 3


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint64, np.float64, np.bool_])
def test_numpy_arrow_round_trip_without_pandas(dtype: type) -> None:
    """The plan path converts through buffers; slices and chunks must come out right."""
    values = (np.arange(37) % 3 == 0) if dtype is np.bool_ else np.arange(37).astype(dtype)
    arr = arrow_of(values)
    assert arr.to_pylist() == values.tolist()
    assert numpy_of(arr).tolist() == values.tolist()
    assert numpy_of(arr.slice(5, 20)).tolist() == values[5:25].tolist()
    chunked = pa.chunked_array([arr.slice(0, 3), arr.slice(10, 9)])
    assert numpy_of(chunked).tolist() == values[:3].tolist() + values[10:19].tolist()
    assert len(numpy_of(pa.chunked_array([], arr.type))) == 0
    assert arrow_of(values, pa.int64() if dtype is not np.bool_ else None).to_pylist() == \
        values.tolist()


def test_strings_of_keeps_text_and_nulls() -> None:
    assert strings_of(["Leads", "", None, "Partners__c", "é"]).to_pylist() == \
        ["Leads", "", None, "Partners__c", "é"]
    assert strings_of([]).to_pylist() == []


def random_sets(n_records: int, n_cadences: int = 40, seed: int = 0) -> list[Pair]:
    """Records in random cadence sets of uneven popularity (~3 a record), some over five."""
    rng = np.random.default_rng(seed)
    weight = 1 / np.sqrt(np.arange(1, n_cadences + 1))
    pairs: list[Pair] = []
    for r in range(n_records):
        k = min(int(rng.geometric(0.3)), n_cadences)
        for c in sorted(rng.choice(n_cadences, size=k, replace=False, p=weight / weight.sum())):
            pairs.append(("Leads", rid(r), cid(int(c))))
    return pairs


def test_random_sets_plan_an_exact_cover_within_the_bound() -> None:
    pairs = random_sets(6000)
    plan = plan_of(pairs)
    check_plan(pairs, plan)
    # few records a set at this size: near the naive count (2.9x the bound; the bench's 10M
    # rows, where sets fill calls: 1.48x)
    assert plan.n_batches <= min(plan.naive_batches, 3 * plan.lower_bound)


@settings(max_examples=25, deadline=None)
@given(pair_lists(max_cadences=12))
def test_dense_and_sorted_pools_give_the_same_plan(pairs: list[Pair]) -> None:
    """Pools as tables by colex rank and as sorted masks are two ways to one search."""
    dense = plan_of(pairs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(planner, "_DENSE_PER_PIECE", 0)
        mp.setattr(planner, "_DENSE_MIN", 0)
        sorted_ = plan_of(pairs)
    assert sorted_.n_batches == dense.n_batches
    assert sorted_.pair_batch.tolist() == dense.pair_batch.tolist()


@pytest.mark.parametrize("seed", range(6))
def test_the_search_keeps_the_cheapest_threshold_as_if_each_were_searched_alone(seed) -> None:
    """The thresholds after the first are searched on two threads, sharing what the first
    chose: the result is the cheapest threshold (the lowest among equals), with the same
    levels as that threshold searched alone from scratch."""
    rng = np.random.default_rng(seed)
    n_bits = int(rng.integers(6, 30))
    sizes = rng.integers(1, MAX_CADENCES_PER_CALL + 1, 3000)
    masks = np.array([sum(1 << int(b) for b in rng.choice(n_bits, int(k), replace=False))
                      for k in sizes], dtype=np.uint64)
    counts = rng.integers(1, 260, len(masks))
    if seed % 2:  # five-cadence remainders of 61-99 records: only a threshold of 500 splits
        # them, so the others first split at four cadences, and choose there on their own
        five = np.flatnonzero(sizes == MAX_CADENCES_PER_CALL)
        counts[five] = 100 * rng.integers(0, 3, len(five)) + rng.integers(61, 100, len(five))
    best = planner._best_search(masks, counts)
    alone = [planner._search(planner._Pool.first(masks, counts), t, {})
             for t in planner._THRESHOLDS]
    cheapest = min(s.n_batches for s in alone)
    assert best.n_batches == cheapest
    assert best.threshold == min(s.threshold for s in alone if s.n_batches == cheapest)
    same = next(s for s in alone if s.threshold == best.threshold)
    for size, level in best.levels.items():
        for name in ("masks", "counts", "keep", "peel", "base"):
            assert getattr(level, name).tolist() == getattr(same.levels[size], name).tolist()


def test_colex_rank_is_dense_and_in_mask_order() -> None:
    for size in range(1, MAX_CADENCES_PER_CALL + 1):
        masks = np.array(sorted(sum(1 << b for b in c)
                                for c in itertools.combinations(range(9), size)), np.uint64)
        assert planner._rank(masks, size).tolist() == list(range(math.comb(9, size)))


def test_millions_of_cadences_are_planned_by_the_records_they_share(monkeypatch) -> None:
    """Past _BLOCKS_MAX blocks of 64 cadences (ids that are records, most likely), cadences
    with the same records share calls, 5 a call; the plan stays an exact cover."""
    monkeypatch.setattr(planner, "_BLOCKS_MAX", 1)
    rng = random.Random(3)
    pairs = sorted({(rng.choice(["Leads", "Contacts"]), rid(rng.randrange(6)),
                     cid(rng.randrange(400))) for _ in range(2500)})
    rng.shuffle(pairs)
    plan = plan_of(pairs)
    check_plan(pairs, plan)
    assert {s.strategy for s in plan.per_module.values()} == {planner._SIGNATURES}
    for stats in plan.per_module.values():  # every cadence has a call; 5 share where they can
        assert stats.batches < stats.naive_batches


@pytest.mark.parametrize(("records", "cadences"), [(50, 100), (1, 75), (250, 65), (3, 1500),
                                                   (101, 64), (7, 61)])
def test_every_record_out_of_many_cadences_takes_the_fewest_calls(records: int,
                                                                  cadences: int) -> None:
    """A list of records asked out of 65 cadences or more (--all-cadences in a large org):
    ⌈cadences / 5⌉ × ⌈records / 100⌉ calls, the fewest any plan can make; blocks of 64
    cadences cost one call more (a block ending in a call of 4 cadences)."""
    pairs = [("Leads", rid(i), cid(k)) for i in range(records) for k in range(cadences)]
    plan = plan_of(pairs)
    check_plan(pairs, plan)
    assert plan.n_batches == -(-cadences // 5) * -(-records // 100)


def test_a_plan_after_the_preflight_counts_only_the_records_it_still_holds(tmp_path) -> None:
    """The preflight drops the pairs of a cadence the org lacks: a record left without any pair
    is no record of the plan (its counts are what `batcher plan` and the summary would say)."""
    from batcher.inputs.scan import scan_input
    from batcher.planreport import plan_scan

    rows = ["record_id,cadence_id"] + [f"55402300000123456{r},55402300000409200{c}"
                                       for r, c in ((1, 1), (1, 3), (2, 3), (3, 1), (3, 2))]
    path = tmp_path / "in.csv"
    path.write_text("\n".join(rows) + "\n")
    scan = scan_input(path, "Leads")
    gone = [i for i, (_, c) in enumerate(scan.cadence_keys()) if c.endswith("3")]
    plan = plan_scan(scan, ~np.isin(scan.codes.cadence, gone))
    assert plan.per_module["Leads"].records == 2  # record ...4562 held only the dropped cadence
    assert plan.per_module["Leads"].pairs == 3
    assert sorted(r for b in plan.iter_batches() for r in b.record_ids) == [
        "554023000001234561", "554023000001234563"]
