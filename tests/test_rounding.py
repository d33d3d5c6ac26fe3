"""Spreadsheet-rounded ids: the rule both ways, at 100 rows and at a million, and the job's
behaviour on the issue's example (no call ever names a possibly rounded id)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batcher.inputs import read_input, scan_input
from batcher.inputs.rounding import poisson_at_least, rounded_ids, zero_tailed
from batcher.job import RunSettings, run_job
from batcher.sandbox.world import World

from .conftest import read_results

CAD = "5540230000040000001"


def excel(ids: np.ndarray) -> np.ndarray:
    """What Excel saves for a Number cell: 15 significant digits, the rest zeros."""
    return np.array([round(v, 15 - len(str(v))) for v in ids.tolist()], dtype=np.uint64)


def genuine(n: int, seed: int = 7, digits: int = 19) -> np.ndarray:
    """n distinct ids of ``digits`` digits, exactly one in a thousand ending in ``000``."""
    rng = np.random.default_rng(seed)
    lo = 10 ** (digits - 1)
    ids = rng.integers(lo, 9 * lo, size=n, dtype=np.uint64)
    ids[ids % 1000 == 0] += 1  # none by chance ...
    ids[::1000] -= ids[::1000] % 1000  # ... then one in a thousand on purpose
    return np.unique(ids)


def test_excel_rounding_is_what_the_rule_looks_for():
    ids = np.array([1990117000000120345, 1990117000000129999, 554023000001798647,
                    123456789012345], dtype=np.uint64)
    assert excel(ids).tolist() == [1990117000000120000, 1990117000000130000,
                                   554023000001799000, 123456789012345]
    assert zero_tailed(excel(ids)).tolist() == [True, True, True, False]  # 15 digits: exact


@pytest.mark.parametrize("n", [100, 1_000_000])
def test_genuine_ids_one_in_a_thousand_ending_in_000_lose_none(n):
    ids = genuine(n)
    assert np.count_nonzero(ids % 1000 == 0) >= n // 1000
    assert rounded_ids(ids) is None


@pytest.mark.parametrize("n", [100, 1_000_000])
def test_a_rounded_column_is_caught_and_every_rounded_id_refused(n):
    ids = np.unique(excel(genuine(n)))
    refused = rounded_ids(ids)
    assert refused is not None
    assert set(refused.tolist()) == set(ids[zero_tailed(ids)].tolist()) == set(ids.tolist())


def test_a_few_rounded_rows_pasted_among_many_genuine_ones_are_caught():
    ids = genuine(100_000)
    pasted = excel(genuine(60, seed=3))
    assert rounded_ids(np.unique(np.concatenate([ids, pasted]))) is not None
    assert rounded_ids(np.unique(np.concatenate([ids, pasted[:2]]))) is None  # chance-like


def test_one_rounded_19_digit_id_alone_is_refused_but_a_16_digit_one_ending_in_0_is_not():
    assert rounded_ids(np.array([1990117000000120000], dtype=np.uint64)) is not None
    assert rounded_ids(np.array([1990117000000120, 1990117000000121], dtype=np.uint64)) is None


def test_poisson_tail():
    assert poisson_at_least(0, 3.0) == 1.0
    assert poisson_at_least(1, 1e-4) == pytest.approx(1 - np.exp(-1e-4))
    assert poisson_at_least(3, 0.5) == pytest.approx(
        1 - np.exp(-0.5) * (1 + 0.5 + 0.125))


def test_the_issue_example_is_refused_row_by_row(tmp_path: Path):
    path = tmp_path / "in.csv"
    path.write_text("Record Id,Cadence Id,Module\n"
                    f"1990117000000120000,{CAD},Leads\n1990117000000120000,{CAD},Leads\n")
    rows = read_input(path).table.to_pylist()
    assert [(r["status"], r["code"]) for r in rows] == [("invalid", "ROUNDED_ID")] * 2
    assert "rounded by a spreadsheet" in rows[0]["reason"]
    assert "as text" in rows[0]["reason"]


def test_a_3000_row_rounded_export_plans_nothing(tmp_path: Path):
    """Three thousand distinct records, rounded onto a handful of ids: nothing may be sent."""
    records = excel(np.arange(1990117000000120001, 1990117000000123001, dtype=np.uint64))
    path = tmp_path / "export.parquet"
    pq.write_table(pa.table({"record_id": pa.array(records).cast(pa.string()),
                             "cadence_id": [CAD] * len(records), "module": ["Leads"] * 3000}),
                   path)
    scan = scan_input(path)
    assert scan.pairs == 0 and scan.duplicates == 0
    assert scan.invalid == scan.rounded == 3000


def test_rounded_cadence_ids_are_refused_too(tmp_path: Path):
    path = tmp_path / "in.csv"
    rows = [f"{1990117000000120345 + i},5540230000040000000,Leads" for i in range(5)]
    path.write_text("record_id,cadence_id,module\n" + "\n".join(rows) + "\n")
    got = read_input(path).table.to_pylist()
    assert {r["code"] for r in got} == {"ROUNDED_ID"}
    assert all("cadence id" in r["reason"] for r in got)


def _tryout_rows(second: str) -> str:
    """Two genuine rows, and two rows on one zero-tailed id: the fourth's email ``second``."""
    return ("Record Id,Cadence Id,Module,Email\n"
            f"1990117000000120345,{CAD},Leads,ana@x.com\n"
            f"1990117000000120346,{CAD},Leads,bo@x.com\n"
            f"1990117000000120000,{CAD},Leads,chen@x.com\n"
            f"1990117000000120000,{CAD},Leads,{second}\n")


def test_two_people_collapsed_onto_one_id_refuse_it_as_rounded(tmp_path: Path, serve):
    """DESIGN: "distinct rows collapsing onto one id" shows rounding. Chen's and Dee's rows
    carry one zero-tailed id (Excel made both of ...120xxx): too few such ids for the count
    rule, so Dee's row was a `duplicate` of Chen's, and the id — a third person's — was sent."""
    bystander = "1990117000000120000"
    wanted = [("Leads", "1990117000000120345", CAD), ("Leads", "1990117000000120346", CAD)]
    live = serve(World.from_pairs([*wanted, ("Leads", bystander, CAD)]))
    path = tmp_path / "in.csv"
    path.write_text(_tryout_rows("dee@x.com"))
    err = io.StringIO()
    result = run_job(RunSettings(input=path, results=tmp_path / "out.csv", timeout=2.0),
                     live.env, stream=err)
    assert result.exit_code == 1
    assert f"rows 3 and 4 give {bystander} with another 'Email': two records made one" in \
        err.getvalue()
    assert ("Leads", bystander, CAD) not in set(live.sandbox.removed)
    assert set(live.sandbox.removed) == set(wanted)
    got = [(r["status"], r["code"]) for r in read_results(tmp_path / "out.csv")]
    assert got == [("unenrolled", "SUCCESS")] * 2 + [("invalid", "ROUNDED_ID")] * 2


@pytest.mark.parametrize("second", ["chen@x.com", " chen@x.com ", ""])
def test_a_repeated_row_that_says_nothing_else_stays_a_duplicate(tmp_path: Path, second: str):
    """The same row twice (or its copy with the email left empty) is no sign of two people."""
    path = tmp_path / "in.csv"
    path.write_text(_tryout_rows(second))
    scan = scan_input(path)
    assert (scan.rounded, scan.duplicates, scan.pairs) == (0, 1, 3)
    assert scan.unusual_ids == ("1990117000000120000",)  # said, all the same


def test_rounding_warnings_are_said_with_quiet_and_kept_in_the_summary_and_page(
        tmp_path: Path, serve, capsys, monkeypatch):
    """A nightly job runs with --quiet: a warning said only on stderr's progress channel was
    lost (a suspect id kept and sent, nothing in the summary or the page)."""
    from batcher.cli import main

    rows = [("Leads", r, CAD) for r in
            ("1990117000000120345", "1990117000000120346", "1990117000000120000")]
    live = serve(World.from_pairs(rows))
    path = tmp_path / "in.csv"
    path.write_text(_tryout_rows("chen@x.com"))
    for k, v in live.env.items():
        monkeypatch.setenv(k, v)
    assert main(["run", str(path), "--results", str(tmp_path / "out.csv"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 ids end in the zeros" in err and "1990117000000120000" in err
    for stem in ("out", "again"):
        if stem == "again":  # the job's warnings outlive its run: `batcher report` keeps them
            assert main(["report", "--journal", str(tmp_path / "out.journal"),
                         "--results", str(tmp_path / "again.csv")]) == 0
        summary = json.loads((tmp_path / f"{stem}.summary.json").read_text())
        assert [w[:31] for w in summary["extra"]["warnings"]] == ["warning: 1 ids end in the zeros"]
        page = (tmp_path / f"{stem}.report.html").read_text()
        assert 'data-metric="warning">warning: 1 ids end in the zeros' in page


def test_a_job_never_names_a_rounded_id_and_says_so(tmp_path: Path, serve):
    """The bystander ...120000 stays enrolled; the run exits 1 and says why on stderr."""
    bystander, wanted = "1990117000000120000", ["1990117000000120001", "1990117000000120002"]
    live = serve(World.from_pairs([("Leads", r, CAD) for r in [bystander, *wanted]]))
    path = tmp_path / "in.csv"
    path.write_text("Record Id,Cadence Id,Module\n"
                    f"{bystander},{CAD},Leads\n{bystander},{CAD},Leads\n")
    err = io.StringIO()
    result = run_job(RunSettings(input=path, results=tmp_path / "out.csv", timeout=2.0), live.env,
                     stream=err)
    assert result.exit_code == 1
    assert live.sandbox.named_pairs == frozenset()
    assert ("Leads", bystander, CAD) not in set(live.sandbox.removed)
    assert [r["code"] for r in read_results(tmp_path / "out.csv")] == ["ROUNDED_ID"] * 2
    assert "look rounded by a spreadsheet" in err.getvalue()
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["by_code"]["invalid"] == {"ROUNDED_ID": 2}


@pytest.mark.parametrize("rounded", [False, True])
def test_a_million_row_file_both_ways(tmp_path: Path, rounded: bool):
    """Through the whole scan: genuine ids (one in a thousand ending in 000) all planned; the same
    ids as Excel saves them all refused, and none planned."""
    ids = genuine(1_000_000)
    ids = excel(ids) if rounded else ids
    path = tmp_path / "million.parquet"
    pq.write_table(pa.table({"record_id": pa.array(ids).cast(pa.string()),
                             "cadence_id": pa.array([CAD] * len(ids)),
                             "module": pa.array(["Leads"] * len(ids))}), path)
    scan = scan_input(path)
    if rounded:
        assert scan.pairs == 0 and scan.rounded == scan.invalid == len(ids)
    else:
        assert scan.pairs == len(ids) and scan.invalid == scan.rounded == 0


def test_a_few_rounded_rows_among_a_thousand_are_refused_or_at_least_said(tmp_path: Path):
    """The fresh-user case: 1,000 good ids and a few pasted rounded rows."""
    good = genuine(1000)
    good = good[zero_tailed(good) == False]  # noqa: E712 (a mask)
    for pasted, refused in ((excel(genuine(6, seed=5)), True), (excel(genuine(2, seed=5)), False)):
        path = tmp_path / f"mixed{len(pasted)}.parquet"
        ids = np.concatenate([good, pasted]).astype(str)
        pq.write_table(pa.table({"record_id": ids, "cadence_id": [CAD] * len(ids),
                                 "module": ["Leads"] * len(ids)}), path)
        scan = scan_input(path)
        if refused:
            assert scan.rounded == len(pasted) and scan.pairs == len(good)
        else:
            assert scan.rounded == 0 and set(scan.unusual_ids) == {str(v) for v in pasted}
