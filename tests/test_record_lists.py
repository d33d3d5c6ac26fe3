"""Record lists: a file of records and `--cadence` ids or `--all-cadences`, end to end against
the sandbox, checked against its truth (what was removed, what every call named)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.inputs import InputOptions, RecordList, read_input
from batcher.job import run_job
from batcher.sandbox.world import CUSTOM_VIEW, MANUAL, World

from .conftest import read_results
from .test_e2e import settings


def write_list(path: Path, records: list[tuple[str, str]], extra: bool = True) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Record Id", "Module"] + ["Email"] * extra)
        for module, rec in records:
            w.writerow([rec, module] + [f"{rec}@example.com"] * extra)
    return path


EVERY = InputOptions(all_cadences=True)


def records(module: str, n: int, base: int) -> list[tuple[str, str]]:
    return [(module, str(base + i)) for i in range(n)]


def test_given_cadences_are_left_by_every_listed_record_and_nothing_else(tmp_path, serve):
    world = World()
    wanted = [world.add_cadence("Leads", MANUAL).id for _ in range(7)]
    other = world.add_cadence("Leads", MANUAL).id
    listed = records("Leads", 250, 1990117000000120345)
    bystanders = records("Leads", 20, 1990117000000990345)
    for i, (module, rec) in enumerate(listed):
        for c in wanted[i % 3:]:  # enrolled in some of the wanted cadences ...
            world.enroll(module, rec, c)
        world.enroll(module, rec, other)  # ... and in one not asked for
    for module, rec in bystanders:
        world.enroll(module, rec, wanted[0])
    live = serve(world)
    inp = write_list(tmp_path / "offboard.csv", listed)

    chosen = InputOptions(cadences=tuple(wanted))
    result = run_job(settings(tmp_path, inp, reading=chosen), live.env)
    assert result.aborted is None, result.aborted

    asked = {(m, r, c) for m, r in listed for c in wanted}
    assert set(live.sandbox.named_pairs) <= asked  # exactness, from the server's side
    enrolled_asked = {(m, r, c) for i, (m, r) in enumerate(listed) for c in wanted[i % 3:]}
    assert set(live.sandbox.removed) == enrolled_asked  # nothing else touched
    # a cross product: ceil(records / 100) x ceil(cadences / 5) calls
    assert len(live.sandbox.calls) == math.ceil(250 / 100) * math.ceil(7 / 5)
    results = read_results(tmp_path / "out.csv")
    assert len(results) == 250 * 7  # one row per (input row, cadence), in input order
    assert [(int(r["row"]), r["cadence_id"]) for r in results[:8]] == \
        [(1, c) for c in wanted] + [(2, wanted[0])]
    statuses = {(r["record_id"], r["cadence_id"]): r["status"] for r in results}
    assert statuses[(listed[0][1], wanted[0])] == "unenrolled"
    assert statuses[(listed[1][1], wanted[0])] == "not_enrolled"
    assert result.exit_code == 0


def test_all_cadences_leaves_every_manual_cadence_of_the_records_module(tmp_path, serve):
    world = World()
    leads = [world.add_cadence("Leads", MANUAL).id for _ in range(6)]
    not_manual = world.add_cadence("Leads", CUSTOM_VIEW).id
    contacts = [world.add_cadence("Contacts", MANUAL).id for _ in range(2)]
    listed = records("Leads", 120, 1990117000000120345) + \
        records("Contacts", 30, 1990117000000550345)
    for module, rec in listed:
        for c in (leads + [not_manual]) if module == "Leads" else contacts:
            world.enroll(module, rec, c)
    live = serve(world)
    inp = write_list(tmp_path / "everything.csv", listed)

    err = io.StringIO()
    dry = run_job(settings(tmp_path, inp, reading=EVERY, dry_run=True, quiet=False),
                  live.env, stream=err)
    assert dry.exit_code == 0 and live.sandbox.calls == [], dry.aborted
    said = err.getvalue()
    assert "each Leads record leaves 6 cadence(s)" in said and not_manual not in said
    assert "each Contacts record leaves 2 cadence(s)" in said

    result = run_job(settings(tmp_path, inp, reading=EVERY), live.env)

    asked = {(m, r, c) for m, r in listed for c in (leads if m == "Leads" else contacts)}
    assert set(live.sandbox.named_pairs) <= asked
    assert set(live.sandbox.removed) == asked  # the custom-view cadence untouched
    assert len(live.sandbox.calls) == 2 * 2 + 1 * 1  # Leads 2 x 2, Contacts 1 x 1
    results = read_results(tmp_path / "out.csv")
    assert len(results) == 120 * 6 + 30 * 2
    assert {r["status"] for r in results} == {"unenrolled"}
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["reconciled"] and summary["rows"] == len(results)


def test_a_job_stopped_before_it_read_the_orgs_cadences_sends_nothing_and_claims_nothing(
        tmp_path, serve):
    """--all-cadences with a token that may not read the org's cadences: the job stops (exit 3)
    and its rows are ``not_sent`` — they were all ``invalid`` "this org has no
    manual_enrollment cadence in module Leads", the retry file empty, as if nobody needed
    removing. The same command, once the token may, finishes the job."""
    world = World()
    leads = [world.add_cadence("Leads", MANUAL).id for _ in range(3)]
    listed = records("Leads", 5, 1990117000000120345)
    for module, rec in listed:
        for c in leads:
            world.enroll(module, rec, c)
    inp = write_list(tmp_path / "everything.csv", listed)
    live = serve(world, scopes=("ZohoCRM.modules.ALL",))
    result = run_job(settings(tmp_path, inp, reading=EVERY), live.env)
    assert result.exit_code == 3 and live.sandbox.calls == []
    rows = read_results(tmp_path / "out.csv")
    assert [r["status"] for r in rows] == ["not_sent"] * len(listed)
    assert not any("no manual_enrollment cadence" in r["message"] for r in rows)
    assert all("read the org's cadences" in r["message"] for r in rows)
    assert "invalid" not in result.summary.human()
    live = serve(world)  # the token may read them now
    assert run_job(settings(tmp_path, inp, reading=EVERY), live.env).exit_code == 0
    rows = read_results(tmp_path / "out.csv")
    assert len(rows) == len(listed) * len(leads)
    assert {r["status"] for r in rows} == {"unenrolled"}


def test_a_record_list_with_a_cadence_column_or_without_cadences_is_refused(tmp_path):
    inp = tmp_path / "in.csv"
    inp.write_text("record_id,cadence_id,module\n1990117000000120345,5540230000040000001,Leads\n")
    out = subprocess.run([sys.executable, "-m", "batcher", "plan", str(inp), "--cadence",
                          "5540230000040000002"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "has a cadence column" in out.stderr
    bare = write_list(tmp_path / "list.csv", records("Leads", 3, 1990117000000120345))
    out = subprocess.run([sys.executable, "-m", "batcher", "plan", str(bare)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--cadence ID or --all-cadences" in out.stderr
    out = subprocess.run([sys.executable, "-m", "batcher", "plan", str(bare), "--cadence", "42"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--cadence '42'" in out.stderr


def test_plan_shows_the_cross_product(tmp_path):
    bare = write_list(tmp_path / "list.csv", records("Leads", 250, 1990117000000120345)
                      + records("Leads", 1, 1990117000000120345))  # one record listed twice
    cads = [str(5540230000040000001 + i) for i in range(7)]
    out = subprocess.run([sys.executable, "-m", "batcher", "plan", str(bare), "--json"]
                         + [a for c in cads for a in ("--cadence", c)],
                         capture_output=True, text=True, timeout=60)
    report = json.loads(out.stdout)
    assert report["pairs"] == 250 * 7 and report["duplicates"] == 7
    assert report["batches"] == 3 * 2
    table = read_input(bare, InputOptions(cadences=tuple(cads))).table.to_pylist()
    assert table[-1]["reason"] == "same pair as row 1" and table[-1]["row"] == 251


def test_all_cadences_says_why_a_row_has_no_cadence(tmp_path):
    from batcher.inputs import scan_input

    path = tmp_path / "list.csv"
    path.write_text("record_id,module\n1990117000000120345,Leads\n1990117000000120346,Vendors\n"
                    "1990117000000120347,\n")
    scan = scan_input(path, EVERY, records=RecordList({"Leads": ["5540230000040000001"]}))
    rows = [r for t in scan.tables() for r in t.to_pylist()]
    assert [(r["row"], r["status"]) for r in rows] == [(1, "valid"), (2, "invalid"),
                                                       (3, "invalid")]
    assert "no manual_enrollment cadence in module Vendors" in rows[1]["reason"]
    assert rows[2]["reason"].startswith("missing module")


def test_all_cadences_finds_a_custom_modules_cadences_whatever_its_case(tmp_path):
    """The org lists its cadences under ``Vendors_X__c``; a list that says ``vendors_x__c``
    (Zoho takes either) leaves them — its rows were invalid, "no manual_enrollment cadence in
    module vendors_x__c", while the preflight and `batcher cadences` took the two as one."""
    from batcher.inputs import scan_input

    path = tmp_path / "list.csv"
    path.write_text("record_id,module\n1990117000000120345,vendors_x__c\n"
                    "1990117000000120346,VENDORS_X__C\n")
    cadences = ["5540230000040000001", "5540230000040000002"]
    scan = scan_input(path, EVERY, records=RecordList({"Vendors_X__c": cadences}))
    rows = [r for t in scan.tables() for r in t.to_pylist()]
    assert [(r["row"], r["cadence_id"], r["status"]) for r in rows] == [
        (1, cadences[0], "valid"), (1, cadences[1], "valid"),
        (2, cadences[0], "valid"), (2, cadences[1], "valid")]


def test_a_cadence_id_typed_on_the_command_line_is_not_judged_rounded(tmp_path):
    """`--cadence 555000000000001000`: an id that ends in 000 (one in a thousand 18-digit ids
    does) made every row ROUNDED_ID, "this file's ids show that rounding" — it was typed, not
    read from a spreadsheet. The records of the list are still judged."""
    from batcher.inputs import scan_input

    path = tmp_path / "list.csv"
    path.write_text("record_id,module\n1990117000000120345,Leads\n1990117000000120346,Leads\n")
    scan = scan_input(path, InputOptions(cadences=("555000000000001000",)))
    assert (scan.pairs, scan.rounded, scan.invalid) == (2, 0, 0)


def test_plan_counts_a_record_lists_cadences_once_whatever_the_modules(tmp_path):
    """Two --cadence ids over records of four modules: "over 2 cadences", not 8 (one per
    module and id)."""
    from batcher.planreport import plan_input

    path = tmp_path / "list.csv"
    path.write_text("record_id,module\n" + "".join(
        f"{1990117000000120345 + i},{m}\n" for i, m in enumerate(
            ["Leads", "Contacts", "Deals", "Vendors_X__c"])))
    report = plan_input(str(path), InputOptions(cadences=("554023000004092008",
                                                          "554023000004092009")))
    assert (report.pairs, report.cadences) == (8, 2)
    assert "over 2 cadences" in report.human()


def _list_file(tmp_path: Path, kind: str, rows: list[list[str]]) -> Path:
    """A record list (record_id, module, note) as CSV, .xlsx or Parquet; a CSV row may be
    ragged (another number of fields)."""
    header = ["record_id", "module", "note"]
    if kind == "csv":
        path = tmp_path / "list.csv"
        path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    elif kind == "xlsx":
        import openpyxl

        path, book = tmp_path / "list.xlsx", openpyxl.Workbook()
        for r in [header, *rows]:
            book.active.append(r)
        book.save(path)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "list.parquet"
        pq.write_table(pa.table({h: [r[i] for r in rows] for i, h in enumerate(header)}), path)
    return path


@pytest.mark.parametrize("kind", ["csv", "xlsx", "parquet"])
def test_every_invalid_row_of_a_record_list_is_invalid_once_per_cadence(tmp_path, serve, kind):
    world = World()
    wanted = [world.add_cadence("Leads", MANUAL).id for _ in range(3)]
    good = "1990117000000120345"
    world.enroll("Leads", good, wanted[0])
    live = serve(world)
    rows = [[good, "Leads", "a"], ["12", "Leads", "bad id"],
            ["1990117000000120347", "", "no module"]]
    if kind == "csv":  # only a CSV row can have another number of fields
        rows.insert(1, ["1990117000000120346", "Leads", "b", "extra"])
    inp = _list_file(tmp_path, kind, rows)

    result = run_job(settings(tmp_path, inp, reading=InputOptions(cadences=tuple(wanted))),
                     live.env)

    results = read_results(tmp_path / "out.csv")
    assert len(results) == len(rows) * 3  # one row per (input row, cadence), in input order
    assert [(int(r["row"]), r["cadence_id"]) for r in results] == \
        [(row, c) for row in range(1, len(rows) + 1) for c in wanted]
    expected = ["ragged row: line 3 has 4 fields"] * (kind == "csv") + \
        ["bad record id: '12'", "missing module"]
    for row, why in enumerate(expected, start=2):  # each invalid row, once per cadence
        said = [(r["status"], r["code"], r["message"][:len(why)])
                for r in results if int(r["row"]) == row]
        assert said == [("invalid", "INVALID_INPUT", why)] * 3, row
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["reconciled"] and summary["rows"] == len(results)
    assert summary["by_status"] == {"unenrolled": 1, "not_enrolled": 2,
                                    "invalid": (len(rows) - 1) * 3}
    assert result.exit_code == 1


def test_an_unusable_list_for_all_cadences_is_refused_like_any_input(tmp_path, serve):
    """A record list is read once the org's cadences are (--all-cadences). One that held no data
    row was not refused as any other unusable input is (exit 2, one line, no file): it went on
    to write results. Now the same: nothing planned, nothing sent, no results."""
    import os

    world = World()
    world.add_cadence("Leads", MANUAL)
    live = serve(world)
    inp = tmp_path / "offboard.csv"
    inp.write_text("Record Id,Module\n")
    out = subprocess.run([sys.executable, "-m", "batcher", "run", str(inp), "--all-cadences",
                          "--results", str(tmp_path / "out.csv")], capture_output=True,
                         text=True, env={**os.environ, **live.env})
    assert out.returncode == 2, out.stderr
    assert "no data rows" in out.stderr.strip().splitlines()[-1], out.stderr
    assert "Traceback" not in out.stderr and "could not be written" not in out.stderr
    assert not (tmp_path / "out.csv").exists()
    assert live.sandbox.calls == []
