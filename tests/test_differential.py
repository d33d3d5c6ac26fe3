"""The reader's scan and the planner against a plain reference (dicts and sets): which rows are
valid pairs, which repeat an earlier pair (and which row they repeat), each record's cadence
set (codes and masks), and that the batches send every valid first-seen pair exactly once,
nothing else, within the call limits.

The scan hashes big inputs (``hashing.HALVES_MIN`` rows or more) in parts on two threads and
finds their repeats part by part: those paths are also run on small inputs by lowering the
thresholds, and once on a real input above 2**20 rows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batcher import hashing
from batcher.inputs import InputScan, scan_input
from batcher.models import MAX_CADENCES_PER_CALL, MAX_RECORDS_PER_CALL
from batcher.planreport import plan_scan

_ID = re.compile(r"[1-9][0-9]{14,18}")
_MODULE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

Pair = tuple[str, str, str]  # (module, lower case; record id; cadence id)


def _clean(value: str | None) -> str:
    value = (value or "").strip()
    return value[5:] if value.startswith("zcrm_") else value


def reference(modules: list[str], records: list[str], cadences: list[str]
              ) -> tuple[list[int], dict[int, int], dict[Pair, int]]:
    """(rows of the valid first-seen pairs; repeating row → the row it repeats; pair → its
    first row), the contract read plainly."""
    valid: list[int] = []
    repeats: dict[int, int] = {}
    first: dict[Pair, int] = {}
    for i, (m, r, c) in enumerate(zip(modules, records, cadences, strict=True)):
        m, r, c = (m or "").strip(), _clean(r), _clean(c)
        if not (_ID.fullmatch(r) and _ID.fullmatch(c) and _MODULE.fullmatch(m)):
            continue
        key = (m.lower(), r, c)
        if key in first:
            repeats[i] = first[key]
        else:
            first[key] = i
            valid.append(i)
    return valid, repeats, first


def write(path: Path, modules: list[str], records: list[str], cadences: list[str]) -> Path:
    pq.write_table(pa.table({"module": pa.array(modules, pa.string()),
                             "record_id": pa.array(records, pa.string()),
                             "cadence_id": pa.array(cadences, pa.string())}), path)
    return path


def scan_pairs(scan: InputScan) -> list[Pair]:
    """Each valid first-seen pair of the scan, through its codes."""
    codes = scan.codes
    names = [n.lower() for n in codes.module_names]
    records = scan.record_values[codes.record].tolist()
    text = scan.cadence_text.to_pylist()
    return [(names[m], str(r), text[c]) for m, r, c in
            zip(codes.module.tolist(), records, codes.cadence.tolist(), strict=True)]


def check(scan: InputScan, modules: list[str], records: list[str], cadences: list[str],
          *, plan: bool = True) -> None:
    valid, repeats, first = reference(modules, records, cadences)
    assert scan.rounded == 0  # the generated ids never end like rounded ones
    assert scan.pair_rows.tolist() == valid
    assert scan.dup_rows.tolist() == sorted(repeats)
    assert scan.dup_first.tolist() == [repeats[i] for i in sorted(repeats)]
    pairs = scan_pairs(scan)
    assert pairs == [(modules[i].strip().lower(), _clean(records[i]), _clean(cadences[i]))
                     for i in valid]
    # a cadence code is one (module, cadence), and one (module, cadence) one code
    meaning = dict(zip(scan.codes.cadence.tolist(), ((m, c) for m, _, c in pairs), strict=True))
    assert len(set(meaning.values())) == len(meaning) == len(scan.cadence_text)
    names = [n.lower() for n in scan.codes.module_names]
    assert scan.cadence_modules is not None
    assert all(names[scan.cadence_modules[code]] == m for code, (m, _) in meaning.items())
    if scan.record_masks is not None:
        assert len(scan.cadence_text) <= 64
        want = [0] * len(scan.record_values)
        for r, c in zip(scan.codes.record.tolist(), scan.codes.cadence.tolist(), strict=True):
            want[r] |= 1 << c
        assert [int(m) for m in scan.record_masks.tolist()] == want
    if plan:
        check_plan(scan, set(first))


def check_plan(scan: InputScan, wanted: set[Pair]) -> None:
    sent: set[Pair] = set()
    calls = 0
    for batch in plan_scan(scan).iter_batches():
        calls += 1
        assert 0 < len(batch.record_ids) <= MAX_RECORDS_PER_CALL
        assert 0 < len(batch.cadence_ids) <= MAX_CADENCES_PER_CALL
        module = batch.module.lower()
        product = {(module, r, c) for r, c in batch.pairs()}
        assert len(product) == len(batch.record_ids) * len(batch.cadence_ids)
        assert product <= wanted, "a call names a pair nobody asked for"
        assert not product & sent, "a pair sent twice"
        sent |= product
    assert sent == wanted
    assert bool(calls) == bool(wanted)


# ------------------------------------------------------------------ generated inputs


def _ids(rng: np.random.Generator, k: int, part: int | None = None) -> np.ndarray:
    """``k`` distinct 19-digit ids not ending in 0 (rounding never refuses them); ``part``:
    all in one part of the big inputs' hashing."""
    out: list[np.ndarray] = []
    have = 0
    while have < k:
        v = rng.integers(10**17, 10**18 - 1, size=max(4 * k, 64) if part is None else 200_000,
                         dtype=np.uint64) * np.uint64(10) + rng.integers(1, 10, dtype=np.uint64)
        if part is not None:
            v = v[(v * _GOLDEN) >> np.uint64(64 - hashing._PART_BITS) == part]
        out.append(v)
        have += len(v)
    v = np.unique(np.concatenate(out))
    rng.shuffle(v)
    assert len(v) >= k
    return v[:k]


def _text(values: np.ndarray) -> list[str]:
    return pc.cast(pa.array(values, pa.uint64()), pa.string()).to_pylist()


#: name: (records: share of the rows, or a count, None for one per row; cadences; module
#: spellings; share of the rows repeating one pair; ids all in one part of the hashing)
SHAPES = {
    "one cadence": (0.3, 1, ("Leads",), 0, False),
    "one pair per record": (None, 7, ("Leads",), 0, False),
    "one pair per record, 200 cadences": (None, 200, ("Leads",), 0, False),
    "40 cadences": (0.25, 40, ("Leads",), 0, False),
    "64 cadences": (0.05, 64, ("Leads",), 0, False),
    "65 cadences": (0.05, 65, ("Leads",), 0, False),
    "100 cadences": (0.25, 100, ("Leads",), 0, False),
    "360 cadences": (0.02, 360, ("Leads",), 0, False),
    "400 cadences": (0.02, 400, ("Leads",), 0, False),
    "3000 cadences": (0.25, 3000, ("Leads",), 0, False),
    "repeats of one pair": (0.25, 5, ("Leads",), 0.4, False),
    "a record in every row, 64 cadences": (1, 64, ("Leads",), 0, False),
    "a record in every row, 400 cadences": (1, 400, ("Leads",), 0, False),
    "modules in two cases": (0.25, 20, ("Leads", "leads", "CONTACTS", "Contacts", "Deals"),
                             0.1, False),
    "every row a repeat of the first": (1, 1, ("Leads",), 1.0, False),
    "ids in one part, 5 cadences": (0.3, 5, ("Leads",), 0, True),
    "ids in one part, 64 cadences": (0.1, 64, ("Leads",), 0, True),
    "ids in one part, 400 cadences": (0.1, 400, ("Leads",), 0, True),
}
#: shapes whose cadence codes follow the rows' order and whose rows mostly hold one cadence:
#: the record's float sums (a power of two per row) pass 2**53, inexact, in the first lane
HEAVY = {"a record in every row, most on its 45th of 64 cadences": (1, 64, 44),
         "4 records, most on their 45th of 50 cadences": (4, 50, 44)}


def generate(shape: str, n: int, seed: int, *, invalid: bool = False
             ) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    if shape in HEAVY:
        n_rec, k, heavy = HEAVY[shape]
        cad = np.concatenate([np.arange(k), np.where(rng.random(n - k) < 0.9, heavy,
                                                     rng.integers(0, k, n - k))])
        return (["Leads"] * n, _text(_ids(rng, n_rec)[rng.integers(0, n_rec, n)]),
                _text(_ids(rng, k)[cad]))
    share, k, spellings, repeated, one_part = SHAPES[shape]
    n_rec = n if share is None else max(int(share * n) if share < 1 else int(share), 1)
    pool = _ids(rng, n_rec, int(rng.integers(0, 256)) if one_part else None)
    rec = pool[np.arange(n) if share is None else rng.integers(0, n_rec, n)]
    records, cadences = _text(rec), _text(_ids(rng, k)[rng.integers(0, k, n)])
    modules = [spellings[i] for i in rng.integers(0, len(spellings), n).tolist()]
    if repeated:  # one pair on many rows, spread over both halves of the rows
        at = np.sort(rng.choice(n, size=int(repeated * n), replace=False))
        for i in at.tolist():
            modules[i], records[i], cadences[i] = modules[at[0]], records[at[0]], cadences[at[0]]
    if invalid:
        bad = ("12345", "0123456789012345678", "abc", "", "12345678901234567890", "１" * 16)
        for i in rng.choice(n, size=max(n // 20, 1), replace=False).tolist():
            kind = int(rng.integers(0, 5))
            if kind == 0:
                records[i] = bad[int(rng.integers(0, len(bad)))]
            elif kind == 1:
                cadences[i] = bad[int(rng.integers(0, len(bad)))]
            elif kind == 2:
                modules[i] = ""
            elif kind == 3:
                records[i] = f" zcrm_{records[i]} "  # valid once cleaned
            else:
                cadences[i] = f"\t{cadences[i]}"
    return modules, records, cadences


@pytest.fixture
def parted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The big inputs' hashing (in parts, on two threads) from 1,024 rows."""
    monkeypatch.setattr(hashing, "HALVES_MIN", 1 << 10)
    monkeypatch.setattr(hashing, "_SAMPLE", 1 << 8)


@pytest.mark.parametrize("shape", [*SHAPES, *HEAVY])
def test_small_inputs_match_the_reference(tmp_path: Path, shape: str):
    rows = generate(shape, 3000, seed=1, invalid=True)
    check(scan_input(write(tmp_path / "in.parquet", *rows)), *rows)


@pytest.mark.parametrize("first_rows_max", [None, 3000])
@pytest.mark.parametrize("shape", [*SHAPES, *HEAVY])
def test_parted_hashing_matches_the_reference(tmp_path: Path, shape: str, parted: None,
                                              first_rows_max: int | None,
                                              monkeypatch: pytest.MonkeyPatch):
    """Many rows' path (per part sums and first-row tables), and its fallback when a part's
    table would be too big."""
    if first_rows_max is not None:
        monkeypatch.setattr(hashing, "_FIRST_ROWS_MAX", first_rows_max)
    rows = generate(shape, 6000, seed=2, invalid=shape.startswith("4"))
    check(scan_input(write(tmp_path / "in.parquet", *rows)), *rows)


def test_csv_in_small_chunks_matches_the_reference(tmp_path: Path):
    modules, records, cadences = generate("modules in two cases", 2000, seed=3, invalid=True)
    path = tmp_path / "in.csv"
    lines = ["module,record_id,cadence_id"] + [
        ",".join(f'"{v}"' for v in row) for row in zip(modules, records, cadences, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    check(scan_input(path, chunk_rows=333), modules, records, cadences)


_TOKEN = st.sampled_from([
    "", "12345", "0123456789012345", "zcrm_{}", " {} ", "{}0", "abc{}", "{}",
])


@st.composite
def inputs(draw: st.DrawFn) -> tuple[list[str], list[str], list[str]]:
    n_rec = draw(st.integers(1, 40))
    n_cad = draw(st.sampled_from([1, 3, 5, 6, 45, 46, 64, 65, 100]))
    rows = draw(st.integers(1, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    recs, cads = _text(_ids(rng, n_rec)), _text(_ids(rng, n_cad))
    spellings = draw(st.lists(st.sampled_from(["Leads", "leads", "Contacts", "DEALS", "x-y"]),
                              min_size=1, max_size=3))
    modules = [spellings[i] for i in rng.integers(0, len(spellings), rows).tolist()]
    records = [recs[i] for i in rng.integers(0, n_rec, rows).tolist()]
    cadences = [cads[i] for i in rng.integers(0, n_cad, rows).tolist()]
    for column in (records, cadences):  # a few odd cells: invalid, or valid once cleaned
        for i in draw(st.lists(st.integers(0, rows - 1), max_size=5)):
            column[i] = draw(_TOKEN).format(column[i])
    return modules, records, cadences


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=inputs(), parts=st.booleans())
def test_random_inputs_match_the_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           rows: tuple[list[str], list[str], list[str]],
                                           parts: bool):
    with monkeypatch.context() as patch:
        if parts:  # the many-rows path, from 64 rows
            patch.setattr(hashing, "HALVES_MIN", 1 << 6)
            patch.setattr(hashing, "_SAMPLE", 1 << 4)
        check(scan_input(write(tmp_path / "in.parquet", *rows)), *rows)


def test_an_input_above_2_20_rows_matches_the_reference(tmp_path: Path):
    """The real many-rows path: 30 cadences under two modules, both spelt two ways, one pair
    on thousands of rows in both halves, a record on a tenth of the rows, invalid rows."""
    n = (1 << 20) + 50_000
    rng = np.random.default_rng(7)
    rec = _ids(rng, n // 4)[rng.integers(0, n // 4, n)]
    rec[rng.random(n) < 0.1] = rec[0]
    cad = _ids(rng, 30)[rng.integers(0, 30, n)]
    mod = rng.integers(0, 4, n)
    at = rng.choice(n, size=5000, replace=False)
    rec[at], cad[at], mod[at] = rec[at[0]], cad[at[0]], mod[at[0]]
    records, cadences = _text(rec), _text(cad)
    spellings = ["Leads", "leads", "Contacts", "CONTACTS"]
    modules = [spellings[m] for m in mod.tolist()]
    for i in rng.choice(n, size=2000, replace=False).tolist():
        records[i] = records[i][:12]
    scan = scan_input(write(tmp_path / "big.parquet", modules, records, cadences))
    check(scan, modules, records, cadences, plan=False)
    # the plan by counts (its batches' pairs each once: test_planner and the small tests)
    plan = plan_scan(scan)
    assert plan.n_pairs == len(scan.pair_rows)
    batch = plan.pair_batch
    assert len(batch) == plan.n_pairs and batch.min() >= 0 and batch.max() < plan.n_batches
