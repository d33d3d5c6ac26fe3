from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from batcher.errors import JournalError, JournalIOError, NotPlanned
from batcher.journal import Journal, stored_ids
from batcher.models import RESULT_COLUMNS, Batch, OutcomeGroup, PairOutcome, Status
from batcher.rowstore import NO_ANSWER, NO_ANSWER_TEXT, RESULT_SCHEMA

# 19-digit ids above 2**63: no integer or float type can carry them
R1, R2, R3, R4 = (f"98765432100{i:08d}" for i in (1, 2, 3, 4))
C1, C2, C3 = (f"55402300000409{i:04d}0" for i in (1, 2, 3))

ROWS = [  # module, record, cadence, status, reason, batch
    ("Leads", R1, C1, "valid", None, "b1"),
    ("Leads", R1, C2, "valid", None, "b1"),
    ("Leads", R2, C1, "valid", None, "b1"),
    ("Leads", R2, C2, "valid", None, "b1"),
    ("Leads", R1, C1, "duplicate", "same pair as row 1", None),
    ("Leads", "12ab", C1, "invalid", "bad record id: '12ab' is not a 15-19 digit Zoho id", None),
    ("Contacts", R3, C3, "valid", None, "b2"),
    (None, R4, C3, "invalid", "missing module (add a module column or pass --module)", None),
]
PLAN = [Batch("b1", "Leads", (R1, R2), (C1, C2)), Batch("b2", "Contacts", (R3,), (C3,))]


def rows_table(rows=ROWS, code: list[str | None] | None = None) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    data = {
        "row": pa.array(range(1, len(rows) + 1), pa.int64()),
        "module": pa.array(cols[0], pa.string()),
        "record_id": pa.array(cols[1], pa.string()),
        "cadence_id": pa.array(cols[2], pa.string()),
        "status": pa.array(cols[3], pa.string()),
        "reason": pa.array(cols[4], pa.string()),
        "batch_id": pa.array(cols[5], pa.string()),
    }
    if code is not None:
        data["code"] = pa.array(code, pa.string())
    return pa.table(data)


def results(j: Journal, chunk_rows: int = 50_000) -> list[dict]:
    return [r for t in j.iter_result_chunks(chunk_rows) for r in t.to_pylist()]


def ok(record: str, cadence: str, status: Status = Status.UNENROLLED, **kw) -> PairOutcome:
    return PairOutcome(record, cadence, status, **kw)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "job.journal"


@pytest.fixture
def loaded(path: Path) -> Path:
    with Journal.open(path, "fp-A", input_name="a.csv") as j:
        assert j.is_new
        j.load(rows_table(), PLAN)
    return path


def test_load_gives_every_row_its_initial_status(loaded: Path) -> None:
    with Journal.open(loaded, "fp-A") as j:
        assert not j.is_new
        assert j.rows == len(ROWS)
        got = results(j)
    assert [r["row"] for r in got] == list(range(1, 9))
    assert [r["status"] for r in got] == ["not_sent"] * 4 + ["duplicate", "invalid", "not_sent",
                                                               "invalid"]
    assert [r["record_id"] for r in got] == [row[1] for row in ROWS]
    assert got[4]["message"] == "same pair as row 1" and got[4]["code"] is None
    assert got[5]["code"] == "INVALID_INPUT" and got[5]["message"].startswith("bad record id")
    assert got[7]["module"] is None and got[7]["batch_id"] is None
    assert [r["batch_id"] for r in got[:4]] == ["b1"] * 4
    assert all(r["retryable"] for r in got if r["status"] == "not_sent")
    assert not any(r["retryable"] for r in got if r["status"] != "not_sent")
    assert got[5]["finished_at"].endswith("Z") and got[0]["finished_at"] is None


def test_load_takes_invalid_codes_from_the_code_column(path: Path) -> None:
    codes = [None] * 5 + [None, None, "NOT_ALLOWED"]
    with Journal.open(path, "fp") as j:
        j.load(rows_table(code=codes), PLAN)
        got = results(j)
    assert got[5]["code"] == "INVALID_INPUT"
    assert got[7]["code"] == "NOT_ALLOWED"


def test_result_chunks_have_the_result_schema_and_keep_input_order_across_chunks(
        loaded: Path) -> None:
    with Journal.open(loaded, "fp-A") as j:
        chunks = list(j.iter_result_chunks(chunk_rows=3))
    assert [c.num_rows for c in chunks] == [3, 3, 2]
    assert all(c.schema == RESULT_SCHEMA for c in chunks)
    assert tuple(chunks[0].column_names) == RESULT_COLUMNS
    assert pa.concat_tables(chunks)["row"].to_pylist() == list(range(1, 9))


def test_reopen_resumes_pending_batches_counters_and_meta(loaded: Path) -> None:
    with Journal.open(loaded, "fp-A") as j:
        started = j.started_at
        assert list(j.pending_batches()) == PLAN
        j.mark_sent("b1")
        j.record_outcomes("b1", [ok(R1, C1), ok(R1, C2), ok(R2, C1, Status.NOT_ENROLLED),
                                 ok(R2, C2)], attempts=1)
        j.add_counters(calls=1, credits=1)
        j.add_counters(calls=2, retries=1, throttled=1, credits=2)
        j.set_meta("settings", {"concurrency": 4})
    with Journal.open(loaded, "fp-A") as j:
        assert not j.is_new
        assert list(j.pending_batches()) == [PLAN[1]]
        assert j.counters() == {"calls": 3, "retries": 1, "throttled": 1, "credits": 3,
                                  "ignored_entries": 0, "runs": 3, "calls_logged": 0}
        assert j.get_meta("settings") == {"concurrency": 4}
        assert j.get_meta("missing", "dflt") == "dflt"
        assert j.started_at == started
        got = results(j)
    assert [r["status"] for r in got[:4]] == ["unenrolled", "unenrolled", "not_enrolled",
                                              "unenrolled"]
    assert got[4]["status"] == "duplicate"  # its pair's outcome lives on row 1 only


def test_an_answered_batch_is_never_handed_out_or_sent_again(loaded: Path) -> None:
    with Journal.open(loaded, "fp-A") as j:
        j.mark_sent("b2")
        j.record_outcomes("b2", [ok(R3, C3)], attempts=1)
        with pytest.raises(ValueError, match="already answered"):
            j.mark_sent("b2")
        with pytest.raises(ValueError, match="already answered"):
            j.record_outcomes("b2", [ok(R3, C3, Status.FAILED)], attempts=2)
    with Journal.open(loaded, "fp-A") as j:
        assert "b2" not in [b.batch_id for b in j.pending_batches()]
        with pytest.raises(ValueError):
            j.mark_sent("b2")
        assert results(j)[6]["status"] == "unenrolled"


def test_sent_but_unanswered_batch_is_pending_again_and_counts_attempts(loaded: Path) -> None:
    with Journal.open(loaded, "fp-A") as j:
        assert j.mark_sent("b2") == 1  # then the process dies before the answer is recorded
    with Journal.open(loaded, "fp-A") as j:
        assert [b.batch_id for b in j.pending_batches()] == ["b1", "b2"]
        assert j.mark_sent("b2") == 2
        j.record_outcomes("b2", [ok(R3, C3, Status.FAILED, code="INTERNAL_SERVER_ERROR",
                                    message="boom", http_status=500, retryable=True)])
        row = results(j)[6]
    assert row["status"] == "failed" and row["code"] == "INTERNAL_SERVER_ERROR"
    assert row["http_status"] == 500 and row["retryable"] is True
    assert row["attempts"] == 2 and row["finished_at"].endswith("Z")


def test_outcomes_are_all_or_nothing(loaded: Path) -> None:
    with Journal.open(loaded, "fp-A") as j:
        with pytest.raises(ValueError, match="not one of its pairs"):
            j.record_outcomes("b1", [ok(R1, C1), ok(R1, C2), ok(R2, C1), ok(R3, C3)], attempts=1)
        with pytest.raises(ValueError, match="left without an outcome"):
            j.record_outcomes("b1", [ok(R1, C1), ok(R1, C2)], attempts=1)
        with pytest.raises(ValueError):
            j.record_outcomes("nope", [], attempts=1)
        assert [r["status"] for r in results(j)[:4]] == ["not_sent"] * 4
        assert [b.batch_id for b in j.pending_batches()] == ["b1", "b2"]
        j.record_outcomes("b1", [ok(R1, C1)], attempts=1, final=False)  # partial: stays pending
        assert [b.batch_id for b in j.pending_batches()] == ["b1", "b2"]
        assert results(j)[0]["status"] == "unenrolled"


def test_split_settles_rejected_pairs_and_replans_the_rest(loaded: Path) -> None:
    bad = PairOutcome(R1, C1, Status.FAILED, code="INVALID_DATA", message="given id seems to be "
                      "invalid", http_status=400)
    children = [Batch("b1.1", "Leads", (R1,), (C2,)), Batch("b1.2", "Leads", (R2,), (C1, C2))]
    with Journal.open(loaded, "fp-A") as j:
        j.mark_sent("b1")
        it = j.pending_batches()
        assert next(it).batch_id == "b1"
        j.settle_and_split("b1", [bad], children)
        # children created while iterating belong to their creator, not to this iteration
        assert [b.batch_id for b in it] == ["b2"]
        with pytest.raises(ValueError):
            j.mark_sent("b1")
    with Journal.open(loaded, "fp-A") as j:
        assert list(j.pending_batches()) == [PLAN[1], *children]
        got = results(j)
        assert j.batch_counts()["split"] == {"batches": 1, "pairs": 4}
    assert (got[0]["status"], got[0]["code"], got[0]["batch_id"]) == ("failed", "INVALID_DATA",
                                                                      "b1")
    assert got[0]["attempts"] == 1 and got[0]["retryable"] is False
    assert [r["batch_id"] for r in got[1:4]] == ["b1.1", "b1.2", "b1.2"]
    assert [r["status"] for r in got[1:4]] == ["not_sent"] * 3


@pytest.mark.parametrize("children, message", [
    ([Batch("b1.1", "Leads", (R1, R2), (C2,))], "in no child"),  # R2×C1 left out
    ([Batch("b1.1", "Leads", (R1, R2), (C1, C2))], "not an unsettled pair"),  # R1×C1 is settled
    ([Batch("b1.1", "Leads", (R1, R2), (C2,)), Batch("b1.2", "Leads", (R2,), (C1, C2))],
     "in two children"),
    ([Batch("b1.1", "Contacts", (R1,), (C2,)), Batch("b1.2", "Leads", (R2,), (C1, C2))],
     "module"),
    ([Batch("b2", "Leads", (R1,), (C2,)), Batch("b1.2", "Leads", (R2,), (C1, C2))],
     "already exists"),
    ([], "without children"),
])
def test_split_refuses_children_that_do_not_cover_the_rest_exactly(
        loaded: Path, children: list[Batch], message: str) -> None:
    with Journal.open(loaded, "fp-A") as j:
        with pytest.raises(ValueError, match=message):
            j.settle_and_split("b1", [ok(R1, C1, Status.FAILED)], children, attempts=1)
        assert list(j.pending_batches()) == PLAN
        assert [r["status"] for r in results(j)[:4]] == ["not_sent"] * 4


def test_a_plan_that_does_not_match_the_rows_is_refused_and_leaves_the_journal_new(
        path: Path) -> None:
    with Journal.open(path, "fp") as j:
        with pytest.raises(ValueError, match="plan error: the pair .* is not one of batch b1"):
            j.load(rows_table(), [Batch("b1", "Leads", (R1, R2), (C1,)), PLAN[1]])
        with pytest.raises(ValueError, match="b1 has 4 pairs but 2 input rows"):
            j.load(rows_table(ROWS[:2]), PLAN[:1])
        assert j.is_new
    with Journal.open(path, "fp") as j:
        assert j.is_new and j.rows == 0 and results(j) == []
        j.load(rows_table(), PLAN)
        assert list(j.pending_batches()) == PLAN


def test_interrupted_load_leaves_nothing_half_loaded(path: Path) -> None:
    def plan_then_ctrl_c():
        yield PLAN[0]
        raise KeyboardInterrupt

    with Journal.open(path, "fp") as j, pytest.raises(KeyboardInterrupt):
        j.load(rows_table(), plan_then_ctrl_c())
    with Journal.open(path, "fp-other-input-is-fine-nothing-was-done") as j:
        assert j.is_new and results(j) == [] and list(j.pending_batches()) == []


def test_a_batch_naming_a_pair_that_is_not_an_input_row_is_refused_at_load(path: Path) -> None:
    rows = [("Leads", R1, C1, "valid", None, "b1"), ("Leads", R3, C1, "valid", None, "b1")]
    with Journal.open(path, "fp") as j:
        with pytest.raises(ValueError, match="not one of batch b1"):
            j.load(rows_table(rows), [Batch("b1", "Leads", (R1, R2), (C1,))])  # counts agree
        assert j.is_new and list(j.pending_batches()) == []


def test_a_batch_changed_in_the_journal_after_load_is_never_handed_out(loaded: Path) -> None:
    import sqlite3
    with sqlite3.connect(loaded) as db:  # a damaged or edited journal: b1 names another record
        db.execute("UPDATE batches SET record_ids = ? WHERE batch_id = 'b1'",
                   (f'["{R1}", "{R3}"]',))
    with Journal.open(loaded, "fp-A") as j, pytest.raises(JournalError, match="refusing to send"):
        list(j.pending_batches())


def test_another_input_is_refused(loaded: Path) -> None:
    with pytest.raises(JournalError) as err:
        Journal.open(loaded, "fp-B", input_name="b.csv")
    text = str(err.value)
    assert "belongs to another input" in text and "'a.csv'" in text and "'b.csv'" in text
    assert err.value.exit_code == 2
    with Journal.open(loaded, None) as j:  # batcher report: any input
        assert j.rows == len(ROWS)


def test_a_fingerprint_still_being_taken_binds_a_new_journal_at_load(tmp_path: Path) -> None:
    """A new job's input is hashed while it is read (0.15 s of a 127 MB file, 0.6 s of a 527 MB
    CSV, before its scan until then): the journal takes the fingerprint when it is loaded; a
    journal already loaded checks it before anything."""
    path, asked = tmp_path / "j.journal", []

    def fingerprint_a() -> str:
        asked.append("a")
        return "fp-A"

    with Journal.open(path, fingerprint_a, input_name="a.csv") as j:
        assert j.is_new and asked == []
        j.load(rows_table(), PLAN)
        assert asked == ["a"]
    with pytest.raises(JournalError, match="belongs to another input"):
        Journal.open(path, lambda: "fp-B", input_name="b.csv")
    with Journal.open(path, fingerprint_a) as j:
        assert not j.is_new and asked == ["a", "a"]
        assert [b.batch_id for b in j.pending_batches()] == ["b1", "b2"]


def test_open_without_fingerprint_needs_an_existing_loaded_journal(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        Journal.open(tmp_path / "nope.journal", None)
    with Journal.open(tmp_path / "empty.journal", "fp"):
        pass
    with pytest.raises(NotPlanned, match="holds no plan") as stopped:
        Journal.open(tmp_path / "empty.journal", None)
    assert stopped.value.exit_code == 3  # its job is to be resumed, not a wrong journal


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "results.csv"
    junk.write_text("row,status\n" * 200)
    with pytest.raises(JournalError, match="not a batcher journal"):
        Journal.open(junk, "fp")
    with pytest.raises(JournalError, match="does not exist"):
        Journal.open(tmp_path / "no" / "such" / "dir.journal", "fp")


def test_second_open_in_the_same_process_is_refused_naming_this_process(loaded: Path) -> None:
    """A library host that opens one journal twice at once (two runs, a run and a report) was
    told the journal was "in use by another batcher run (pid <its own pid>)": the run in the
    way is its own."""
    with Journal.open(loaded, "fp-A"):
        for fingerprint in ("fp-A", None):
            with pytest.raises(JournalError) as err:
                Journal.open(loaded, fingerprint)
            text = str(err.value)
            assert f"another run of this same process (pid {os.getpid()})" in text
            assert "another batcher run" not in text
    Journal.open(loaded, "fp-A").close()  # released on close


def test_lock_held_by_another_process_and_released_by_kill_9(loaded: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from batcher.journal import Journal
            j = Journal.open(sys.argv[1], "fp-A")
            print("ready", flush=True)
            sys.stdin.read()
        """), str(loaded)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(JournalError) as err:
            Journal.open(loaded, "fp-A")
        assert f"in use by another batcher run (pid {holder.pid})" in str(err.value)
        assert err.value.exit_code == 2
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with Journal.open(loaded, "fp-A") as j:  # no stale lock after kill -9
            assert list(j.pending_batches()) == PLAN
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdin.close()
        holder.stdout.close()


def test_million_row_load_and_scan(tmp_path: Path) -> None:
    cadences = [f"5540230000040920{i:02d}" for i in range(5)]
    n_records = 200_000
    t0 = time.perf_counter()
    records = [f"98765432100{i:08d}" for i in range(n_records)]
    n = n_records * len(cadences)
    rows = pa.table({
        "row": pa.array(range(1, n + 1), pa.int64()),
        "module": pa.array(["Leads"] * n),
        "record_id": pa.array([r for r in records for _ in cadences]),
        "cadence_id": pa.array(cadences * n_records),
        "status": pa.array(["valid"] * n),
        "reason": pa.nulls(n, pa.string()),
        "batch_id": pa.array([f"b{i // 500}" for i in range(n)]),
    })
    plan = (Batch(f"b{k}", "Leads", tuple(records[k * 100:(k + 1) * 100]), tuple(cadences))
            for k in range(n_records // 100))
    built = time.perf_counter()
    with Journal.open(tmp_path / "big.journal", "fp") as j:
        j.load(rows, plan)
        loaded = time.perf_counter()
        pending = sum(1 for _ in j.pending_batches())
        listed = time.perf_counter()
        last = None
        total = 0
        for chunk in j.iter_result_chunks():
            total += chunk.num_rows
            last = chunk
        scanned = time.perf_counter()
    print(f"\n1M rows: build {built - t0:.1f}s, load {loaded - built:.1f}s, "
          f"pending batches {listed - loaded:.1f}s, results scan {scanned - listed:.1f}s")
    assert (pending, total) == (2000, n)
    assert last["record_id"][-1].as_py() == records[-1]


def test_mixed_outcomes_land_on_the_right_rows(path: Path) -> None:
    """One answer, several results: whole records, single pairs, and the batch-wide majority."""
    rows = [("Leads", r, c, "valid", None, "b1") for r in (R1, R2, R3) for c in (C1, C2)]
    batch = Batch("b1", "Leads", (R1, R2, R3), (C1, C2))
    failed = {"code": "INVALID_DATA", "message": "given id seems to be invalid",
              "http_status": 207}
    with Journal.open(path, "fp") as j:
        j.load(rows_table(rows), [batch])
        assert j.mark_sent("b1") == 1
        j.record_outcomes("b1", [
            ok(R1, C1), ok(R1, C2, Status.NOT_ENROLLED, code="SUCCESS"),
            ok(R2, C1, Status.FAILED, **failed), ok(R2, C2, Status.FAILED, **failed),
            ok(R3, C2), ok(R3, C1)])
        got = {(r["record_id"], r["cadence_id"]): r for r in results(j)}
        assert list(j.pending_batches()) == []
    assert {k: v["status"] for k, v in got.items()} == {
        (R1, C1): "unenrolled", (R1, C2): "not_enrolled", (R2, C1): "failed",
        (R2, C2): "failed", (R3, C1): "unenrolled", (R3, C2): "unenrolled"}
    assert got[(R2, C2)]["code"] == "INVALID_DATA" and got[(R2, C2)]["http_status"] == 207
    assert got[(R1, C2)]["code"] == "SUCCESS" and got[(R1, C1)]["code"] is None
    assert {v["attempts"] for v in got.values()} == {1}
    assert all(v["finished_at"] for v in got.values())


def test_a_pair_given_two_outcomes_is_refused(loaded: Path) -> None:
    with Journal.open(loaded, "fp-A") as j:
        with pytest.raises(ValueError, match="two outcomes"):
            j.record_outcomes("b1", [ok(R1, C1), ok(R1, C1, Status.FAILED), ok(R1, C2),
                                     ok(R2, C1)], attempts=1)
        with pytest.raises(ValueError, match="not an outcome"):
            j.record_outcomes("b2", [ok(R3, C3, Status.NOT_SENT)], attempts=1)
        assert [r["status"] for r in results(j)[:4]] == ["not_sent"] * 4


def test_record_groups_stores_each_group_and_answers_the_batch(loaded: Path) -> None:
    with Journal.open(loaded, "fp-A") as j:
        j.mark_sent("b1")
        j.record_groups("b1", [
            OutcomeGroup((R1, R2), (C1,), Status.UNENROLLED, "SUCCESS", "removed", 207),
            OutcomeGroup((R1,), (C2,), Status.NOT_ENROLLED, "SUCCESS", "not in it", 207),
            OutcomeGroup((R2,), (C2,), Status.FAILED, "INVALID_DATA", "bad", 207, True),
        ])
        assert [b.batch_id for b in j.pending_batches()] == ["b2"]
        with pytest.raises(ValueError, match="already answered"):
            j.mark_sent("b1")
        got = results(j)[:4]
    assert [(r["record_id"], r["cadence_id"], r["status"], r["code"], r["message"],
             r["http_status"], r["retryable"], r["attempts"]) for r in got] == [
        (R1, C1, "unenrolled", "SUCCESS", "removed", 207, False, 1),
        (R1, C2, "not_enrolled", "SUCCESS", "not in it", 207, False, 1),
        (R2, C1, "unenrolled", "SUCCESS", "removed", 207, False, 1),
        (R2, C2, "failed", "INVALID_DATA", "bad", 207, True, 1),
    ]


@pytest.mark.parametrize("groups, error", [
    ([OutcomeGroup((R1, R2), (C1, C2), Status.UNENROLLED),
      OutcomeGroup((R2,), (C2,), Status.FAILED)], "two outcomes"),
    ([OutcomeGroup((R1, R1), (C1, C2), Status.UNENROLLED)], "two outcomes"),
    ([OutcomeGroup((R1, R2), (C1, C3), Status.UNENROLLED)], "not one of its pairs"),
    ([OutcomeGroup((R1, R2), (C1,), Status.UNENROLLED)], "left without an outcome"),
    ([], "left without an outcome"),
    ([OutcomeGroup((R1, R2), (C1, C2), Status.NOT_SENT)], "not an outcome"),
])
def test_record_groups_refuses_anything_but_an_exact_cover(loaded: Path, groups, error) -> None:
    with Journal.open(loaded, "fp-A") as j:
        with pytest.raises(ValueError, match=error):
            j.record_groups("b1", groups, attempts=1)
        # nothing of the refused answer was kept: the batch is still open, its rows untouched
        assert [b.batch_id for b in j.pending_batches()] == ["b1", "b2"]
        assert [r["status"] for r in results(j)[:4]] == ["not_sent"] * 4


def test_mark_sent_many_counts_attempts_in_one_go_and_refuses_answered_batches(loaded: Path):
    with Journal.open(loaded, "fp-A") as j:
        assert j.mark_sent_many(["b1", "b2"]) == {"b1": 1, "b2": 1}
        assert j.mark_sent("b1") == 2  # a retry counts again
        j.record_outcomes("b2", [ok(R3, C3)])
        with pytest.raises(ValueError, match="must not be sent again"):
            j.mark_sent_many(["b1", "b2"])
        # the refused call changed nothing: b1 still has 2 attempts
        assert j.mark_sent("b1") == 3


# ------------------------------------------------------------------ per batch == per pair

_RESULTS = [
    (Status.UNENROLLED, "SUCCESS", "removed", 200, False),
    (Status.NOT_ENROLLED, "SUCCESS", "not in it", 200, False),
    (Status.SCHEDULED, "SCHEDULED", "later", 202, False),
    (Status.FAILED, "INVALID_DATA", "bad id", 400, False),
    (Status.FAILED, "INTERNAL_SERVER_ERROR", "try again", 500, True),
]


def _random_job(rnd):
    """Rows (valid pairs in random order among invalid and duplicate rows), the plan as the job
    hands it to the journal (a PlanMaker), and each row's initial model entry."""
    from batcher.planner import plan_pairs

    n_rec, n_cad = rnd.randint(1, 40), rnd.randint(1, 8)
    pairs = list({(rnd.choice(["Leads", "Contacts"]), str(10**18 + rnd.randrange(n_rec)),
                   str(2 * 10**18 + rnd.randrange(n_cad))) for _ in range(rnd.randint(1, 300))})
    rnd.shuffle(pairs)
    plan = plan_pairs(*zip(*pairs, strict=True))
    batches = list(plan.iter_batches())
    rows, k = [], 0
    while k < len(pairs):
        kind = rnd.random()
        if kind < 0.1:
            rows.append(("Leads", "12ab", pairs[0][2], "invalid", "bad record id", None, None))
        elif kind < 0.15 and k:
            rows.append((*pairs[k - 1], "duplicate", "same pair", None, None))
        else:
            rows.append((*pairs[k], "valid", None, int(plan.pair_batch[k]),
                         int(plan.pair_rank[k])))
            k += 1
    cols = list(zip(*rows, strict=True))
    table = pa.table({
        "row": pa.array(range(1, len(rows) + 1), pa.int64()),
        **{name: pa.array(cols[i], pa.string()) for i, name in enumerate(
            ("module", "record_id", "cadence_id", "status", "reason"))},
    })
    model = []
    for _, r, c, status, reason, b, _ in rows:
        if status == "valid":
            model.append({"status": "not_sent", "code": None, "message": None,
                          "http_status": None, "attempts": 0, "batch_id": batches[b].batch_id,
                          "retryable": True, "done": False, "pair": (r, c)})
        else:
            model.append({"status": status, "message": reason, "http_status": None,
                          "code": "INVALID_INPUT" if status == "invalid" else None,
                          "attempts": 0, "batch_id": None, "retryable": False, "done": True,
                          "pair": None})
    return table, lambda: SimpleNamespace(blocks=lambda: plan.blocks(step=3),
                                          placement=plan.placement), model


def _answer_at_random(j: Journal, b: Batch, attempts: int, rnd, settle=lambda *a: None,
                      moved=lambda *a: None) -> None:
    """Answer sent batch ``b`` as Zoho might: lost (nothing recorded), shared or mixed groups,
    per-pair outcomes in one or two parts, or a rejection that settles some pairs and re-plans
    the rest per record; ``settle(batch_id, pairs, result, attempts)`` and ``moved(parent,
    child)`` are told what was recorded."""
    op = rnd.random()
    if op < 0.1:
        return  # the answer was lost: the batch is sent again later
    if op < 0.4:
        results = rnd.sample(_RESULTS, rnd.randint(1, 3))
        groups = []
        for r in b.record_ids:
            cut = rnd.randint(0, len(b.cadence_ids))
            for part in (b.cadence_ids[:cut], b.cadence_ids[cut:]):
                if part:
                    groups.append(OutcomeGroup((r,), part, *rnd.choice(results)))
        if len(results) == 1 and rnd.random() < 0.5:
            groups = [OutcomeGroup(b.record_ids, b.cadence_ids, *results[0])]
        j.record_groups(b.batch_id, groups, attempts)
        for g in groups:
            settle(b.batch_id, [(r, c) for r in g.record_ids for c in g.cadence_ids],
                   (g.status, g.code, g.message, g.http_status, g.retryable), attempts)
    elif op < 0.7:
        results = rnd.sample(_RESULTS, rnd.randint(1, 2))
        outs = [PairOutcome(r, c, *rnd.choice(results)) for r, c in b.pairs()]
        cut = rnd.randint(0, len(outs))
        if cut:
            j.record_outcomes(b.batch_id, outs[:cut], attempts, final=False)
        j.record_outcomes(b.batch_id, outs[cut:], attempts)
        for o in outs:
            settle(b.batch_id, [(o.record_id, o.cadence_id)],
                   (o.status, o.code, o.message, o.http_status, o.retryable), attempts)
    else:  # a rejection: some pairs settled, the rest re-planned per record
        failed = [PairOutcome(r, c, *_RESULTS[3]) for r, c in b.pairs() if rnd.random() < 0.3]
        settled = {(o.record_id, o.cadence_id) for o in failed}
        children = []
        for r in b.record_ids:
            left = tuple(c for c in b.cadence_ids if (r, c) not in settled)
            if left:
                children.append(Batch(f"{b.batch_id}.{len(children) + 1}", b.module, (r,),
                                      left))
        j.settle_and_split(b.batch_id, failed, children, attempts)
        settle(b.batch_id, settled, _RESULTS[3], attempts)
        for child in children:
            moved(b, child)


def test_per_batch_outcomes_equal_the_per_pair_model_for_random_answer_mixes(tmp_path):
    """Random plans answered at random — shared answers, mixed groups, per-pair answers given in
    two parts, splits, lost answers (re-sent later), retry rounds, a reopen — give every row the
    status, code, message, attempts and batch a per-pair journal would."""
    import random
    from collections import Counter

    for seed in range(40):
        rnd = random.Random(seed)
        table, planned, model = _random_job(rnd)
        where = {}  # (batch id, record, cadence) → model rows of that pair
        for entry in model:
            if entry["pair"]:
                where[(entry["batch_id"], *entry["pair"])] = entry
        sent: dict[str, int] = {}
        marked: set[str] = set()  # batches the journal was told were sent
        path = tmp_path / f"j{seed}.journal"
        j = Journal.open(path, "fp")
        j.load(table, planned)
        # what the load counted is what the table holds
        counts = j.batch_counts()
        with closing(sqlite3.connect(path)) as db:
            assert counts == {s: {"batches": n, "pairs": p} for s, n, p in db.execute(
                "SELECT state, count(*), sum(npairs) FROM batches GROUP BY state")}

        def settle(batch_id, pairs, result, attempts, where=where):
            status, code, message, http, retryable = result
            for r, c in pairs:
                where[(batch_id, r, c)].update(
                    status=status.value, code=code, message=message, http_status=http,
                    retryable=retryable, attempts=attempts, done=True)

        def moved(parent, child, where=where):
            for r, c in child.pairs():
                entry = where.pop((parent.batch_id, r, c))
                entry.update(batch_id=child.batch_id)
                where[(child.batch_id, r, c)] = entry

        for _step in range(80):
            pending = list(j.pending_batches())
            if not pending:
                if rnd.random() < 0.5 and j.requeue_retryable(max_rounds=2):
                    for b in j.pending_batches():
                        parent = b.batch_id.rsplit(".r", 1)[0]
                        for r, c in b.pairs():
                            entry = where.pop((parent, r, c))
                            assert entry["status"] == "failed" and entry["retryable"]
                            entry.update(status="not_sent", code=None, message=None,
                                         http_status=None, batch_id=b.batch_id, done=False,
                                         attempts=sent[parent])
                            where[(b.batch_id, r, c)] = entry
                            sent[b.batch_id] = sent[parent]
                    continue
                break
            b = rnd.choice(pending)
            marked.add(b.batch_id)
            attempts = sent[b.batch_id] = j.mark_sent(b.batch_id)
            assert attempts == sent.get(b.batch_id)
            _answer_at_random(j, b, attempts, rnd, settle, moved)
            if rnd.random() < 0.05:
                j.close()
                j = Journal.open(path, "fp")

        got = [r for t in j.iter_result_chunks(rnd.randint(1, 50)) for r in t.to_pylist()]
        assert len(got) == len(model), seed
        for entry in model:  # sent, never answered: it says it may have been applied
            if entry["pair"] and not entry["done"] and entry["batch_id"] in marked:
                entry.update(code=NO_ANSWER, message=NO_ANSWER_TEXT,
                             attempts=max(entry["attempts"], sent[entry["batch_id"]]))
        for row, (entry, r) in enumerate(zip(model, got, strict=True), 1):
            want = {k: entry[k] for k in ("status", "code", "message", "http_status",
                                          "attempts", "batch_id", "retryable")}
            assert r["row"] == row
            assert {k: r[k] for k in want} == want, (seed, row)
            assert (r["finished_at"] is not None) == entry["done"], (seed, row)
        assert j.status_counts() == dict(Counter(e["status"] for e in model)), seed
        assert j.retryable_failures() == sum(e["status"] == "failed" and e["retryable"]
                                             for e in model), seed
        j.close()


def test_results_read_while_the_answers_land_are_the_results_read_after_them(
        tmp_path, monkeypatch):
    """The results a run writes while it sends (``until`` unset) take a chunk only once every
    batch of its rows is answered — never a row that an answer still to come would change —
    and, with the rest read once the run stops, equal the results read after every answer, for
    random plans answered at random (shared and mixed answers, splits, lost answers) as a
    reader thread reads them."""
    import random

    from batcher import journal as journal_module

    monkeypatch.setattr(journal_module, "_SETTLE_PAUSE_S", 0.0005)
    monkeypatch.setattr(journal_module, "_SETTLE_PAUSE_MAX_S", 0.002)
    early_chunks = 0
    for seed in range(30):
        rnd = random.Random(seed)
        table, planned, _ = _random_job(rnd)
        j = Journal.open(tmp_path / f"j{seed}.journal", "fp")
        j.load(table, planned)
        chunk_rows = rnd.randint(1, 30)
        until = threading.Event()
        read: list[tuple[bool, list[dict]]] = []  # (read before the run stopped, rows)
        failed: list[BaseException] = []

        def reader(j=j, chunk_rows=chunk_rows, until=until, read=read, failed=failed):
            try:
                for t in j.iter_result_chunks(chunk_rows, until=until):
                    read.append((not until.is_set(), t.to_pylist()))
            except BaseException as exc:  # pragma: no cover - reported below
                failed.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        for _step in range(60):
            pending = list(j.pending_batches())
            if not pending:
                break
            b = rnd.choice(pending)
            _answer_at_random(j, b, j.mark_sent(b.batch_id), rnd)
            time.sleep(rnd.choice([0, 0.0005, 0.002]))
        until.set()
        thread.join(30)
        assert not thread.is_alive() and not failed, (seed, failed)
        after = results(j, chunk_rows)
        assert [r for _, rows in read for r in rows] == after, seed
        for early, rows in read:
            if early:
                early_chunks += 1
                assert all(r["status"] != "not_sent" for r in rows), seed
        j.close()
    assert early_chunks > 20  # the property held on chunks read early, not only at the end


def test_a_chunk_of_results_waits_for_every_batch_of_its_rows_and_those_they_moved_to(
        path: Path, monkeypatch) -> None:
    """Rows 1-4 are b1's, row 7 b2's. Read two rows at a time while the run sends: nothing
    comes while b1 is open; once b1 is split (a pair settled, the rest moved to new batches)
    still nothing, since its moved pairs wait for their new batches; once those are answered
    the rows 1-6 come (5, 6: a duplicate and an invalid row, settled from the start) and row 7
    waits for b2 until the run stops, then comes as not_sent."""
    from batcher import journal as journal_module

    monkeypatch.setattr(journal_module, "_SETTLE_PAUSE_S", 0.001)
    monkeypatch.setattr(journal_module, "_SETTLE_PAUSE_MAX_S", 0.002)
    with Journal.open(path, "fp-A") as j:
        j.load(rows_table(), PLAN)
        until = threading.Event()
        chunks = j.iter_result_chunks(2, until=until)
        got: list[dict] = []
        def reader() -> None:
            for t in chunks:
                got.extend(t.to_pylist())

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(0.05)
        assert got == []
        j.settle_and_split("b1", [ok(R1, C1, Status.FAILED, code="INVALID_DATA")],
                           [Batch("b1.1", "Leads", (R1,), (C2,)),
                            Batch("b1.2", "Leads", (R2,), (C1, C2))], j.mark_sent("b1"))
        time.sleep(0.05)
        assert got == []
        j.record_outcomes("b1.1", [ok(R1, C2)], j.mark_sent("b1.1"))
        j.record_groups("b1.2", [OutcomeGroup((R2,), (C1, C2), Status.NOT_ENROLLED,
                                              "SUCCESS", "not in it", 200)],
                        j.mark_sent("b1.2"))
        deadline = time.monotonic() + 10
        while len(got) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert [(r["row"], r["status"]) for r in got] == [
            (1, "failed"), (2, "unenrolled"), (3, "not_enrolled"), (4, "not_enrolled"),
            (5, "duplicate"), (6, "invalid")]
        until.set()
        thread.join(10)
        assert [(r["row"], r["status"]) for r in got[6:]] == [(7, "not_sent"), (8, "invalid")]
        assert got == results(j, 2)


@pytest.mark.parametrize("damage", ["flip", "drop"])
def test_damaged_or_missing_stored_rows_are_refused_when_the_journal_is_opened(
        loaded: Path, damage: str) -> None:
    """Damage inside a row chunk (which SQLite's page checks do not see) or a chunk gone: the
    journal is refused when opened — before any call — not when the results are due."""
    import sqlite3
    with sqlite3.connect(loaded) as db:
        if damage == "flip":
            data = bytearray(db.execute("SELECT data FROM row_chunks").fetchone()[0])
            data[len(data) // 2] ^= 0xFF
            db.execute("UPDATE row_chunks SET data = ?", (bytes(data),))
        else:
            db.execute("DELETE FROM row_chunks")
    with pytest.raises(JournalIOError, match="malformed") as err:
        Journal.open(loaded, "fp-A")
    assert err.value.exit_code == 3 and "sends nothing" in str(err.value)


def test_an_emptied_journal_is_refused_not_started_over(loaded: Path) -> None:
    """A journal truncated to nothing (a full disk, ``> file``) would start the job over and send
    every answered call again: refused as damaged. A new journal is never left empty."""
    loaded.write_bytes(b"")
    with pytest.raises(JournalIOError, match="the file is empty"):
        Journal.open(loaded, "fp-A")
    fresh = loaded.with_name("fresh.journal")
    with Journal.open(fresh, "fp-B") as j:
        assert j.is_new and fresh.stat().st_size > 0 and oct(fresh.stat().st_mode)[-3:] == "600"
    assert sorted(p.name for p in loaded.parent.iterdir() if "fresh" in p.name) == [
        "fresh.journal", "fresh.journal.lock"]


def test_a_journal_that_cannot_be_made_leaves_no_file_of_it_behind(tmp_path: Path) -> None:
    """A scheduler's file size limit (``ulimit -f``) below SQLite's shared memory file: making
    the journal fails (exit 3, resumable), and neither the half-made journal nor SQLite's
    ``-wal``/``-shm`` files of it stay behind, one pair a night."""
    script = textwrap.dedent(f"""
        import resource
        from batcher.errors import JournalIOError
        from batcher.journal import Journal
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, resource.RLIM_INFINITY))
        try:
            Journal.open({str(tmp_path / "job.journal")!r}, "fp")
        except JournalIOError as exc:
            print(exc.exit_code)
    """)
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30)
    assert got.stdout.strip() == "3", got.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor the lock file it made


def test_rows_coded_by_the_scan_give_the_results_the_text_rows_give(tmp_path: Path) -> None:
    """The scan's coded rows (ids as integers, no second read) and the reader's text rows of
    the same messy file (odd ids, blank, ragged and repeated rows, zcrm_ prefixes, a bad
    module, rows the preflight refused) make the same results, row for row."""
    from batcher.inputs import scan_input
    from batcher.planreport import plan_scan

    lines = ["Module,Record Id,Cadence Id,Note"]
    for i in range(400):
        record, cadence = f"98765432100{i % 90:08d}", C1 if i % 3 else C2
        lines.append({0: f"Leads,{record},{cadence},n{i}", 1: f"Leads, zcrm_{record} ,{C3},x",
                      2: f"Leads,12ab,{cadence},bad", 3: ",,,", 4: f"Nope,{record},{C1},m",
                      5: f"Contacts,{record},{cadence}", 6: f"Leads,0{record[1:]},{C2},z",
                      }.get(i % 13, f"Leads,{record},{C3},again"))
    path = tmp_path / "messy.csv"
    path.write_text("\n".join(lines) + "\n")
    scan = scan_input(path)
    verdict = [("INVALID_DATA", "unknown cadence")]
    refused = (scan.codes.cadence == 1).astype("int64") - 1
    plan = plan_scan(scan, refused < 0)
    got = []
    for name, rows in (("coded", scan.coded_tables(verdicts=verdict, verdict_of_pair=refused,
                                                   chunk_rows=37)),
                       ("text", scan.tables(verdicts=verdict, verdict_of_pair=refused))):
        with Journal.open(tmp_path / f"{name}.journal", "fp") as j:
            j.load(rows, lambda: plan)
            got.append([{k: v for k, v in r.items() if k != "finished_at"}
                        for r in results(j, chunk_rows=29)])
    coded, text = got
    assert coded == text
    assert len(coded) == scan.rows and {r["status"] for r in coded} >= {
        "not_sent", "invalid", "duplicate"}
    assert {r["code"] for r in coded if r["status"] == "invalid"} >= {"INVALID_INPUT",
                                                                      "INVALID_DATA"}
    assert all(r["record_id"] is None or not r["record_id"].startswith("zcrm_") for r in coded)


def test_batches_planned_from_a_scan_name_the_inputs_ids_as_text(tmp_path: Path) -> None:
    """The plan hands the journal its records as integers, which it keeps as such (8 bytes an
    id): the batches handed out, and the ids the journal keeps, name the input's ids exactly —
    one above 2**63 too, which an int64 or a float would change."""
    import sqlite3

    from batcher.inputs import scan_input
    from batcher.planreport import plan_scan

    ids = ["9999999999999999999", "100000000000000", R1, R2]
    path = tmp_path / "ids.csv"
    path.write_text("module,record_id,cadence_id\n"
                    + "".join(f"Leads,{r},{c}\n" for r in ids for c in (C1, C2)))
    scan = scan_input(path)
    plan = plan_scan(scan)
    with Journal.open(tmp_path / "j.journal", "fp") as j:
        j.load(scan.coded_tables(), lambda: plan)
        sent = {(r, c) for b in j.pending_batches() for r in b.record_ids for c in b.cadence_ids}
    assert sent == {(r, c) for r in ids for c in (C1, C2)}
    with sqlite3.connect(tmp_path / "j.journal") as db:
        stored = [stored_ids(t) for (t,) in db.execute("SELECT record_ids FROM batches")]
    assert sorted(r for records in stored for r in records) == sorted(ids)


def test_a_list_of_valid_rows_is_kept_in_a_few_bytes_a_row(tmp_path: Path) -> None:
    """A journal keeps every row of the input; a row that needs no note (the valid ones: most
    rows of most lists) keeps none: its number, record and cadence, ~11 bytes compressed, not
    also an 'INVALID_INPUT' hidden under its null code (~4 bytes more a row)."""
    import sqlite3

    from batcher.inputs import scan_input
    from batcher.planreport import plan_scan

    rng = np.random.default_rng(5)
    records = 554023000000000000 + rng.choice(10**10, 20_000, replace=False)
    path = tmp_path / "list.csv"
    path.write_text("module,record_id,cadence_id\n" + "".join(
        f"Leads,{'x' if i % 1000 == 7 else r},{C1 if i % 2 else C2}\n"  # a few invalid rows
        for i, r in enumerate(records.tolist())))
    scan = scan_input(path)
    with Journal.open(tmp_path / "j.journal", "fp") as j:
        j.load(scan.coded_tables(), lambda: plan_scan(scan))
    with sqlite3.connect(tmp_path / "j.journal") as db:
        (stored,) = db.execute("SELECT sum(length(data)) FROM row_chunks").fetchone()
    assert stored / len(records) < 13  # 14.9 with the hidden text


def test_the_same_file_edited_since_the_job_began_is_named_as_such(loaded: Path) -> None:
    """Not "made for another file": the user edited the list the job was started on, and needs
    to know that putting it back resumes and that a new journal starts the changed file over."""
    with pytest.raises(JournalError) as err:
        Journal.open(loaded, "fp-B", input_name="a.csv")
    text = str(err.value)
    assert "'a.csv' as it was then" in text and "has changed since" in text
    assert "put that file back" in text and "another --journal" in text
    assert err.value.exit_code == 2


def test_each_rows_planned_batch_is_read_from_positions_of_either_width() -> None:
    """Positions are stored 4 bytes each while they fit, else 8 (a job past two billion rows):
    both widths may sit in one journal."""
    from batcher.rowstore import planned_seqs

    narrow = np.array([3, 1], np.int32).tobytes()
    wide = np.array([2, 5], np.int64).tobytes()
    assert planned_seqs([(1, 2, narrow), (2, 2, wide)], 6).tolist() == [1, 2, 1, 0, 2, 0]
    assert planned_seqs([], 3).tolist() == [0, 0, 0]


def test_a_journal_keeping_its_record_ids_as_json_text_still_resumes(tmp_path: Path) -> None:
    """Journals made before the ids were kept as integers hold JSON text: a resume reads the
    same batches from either, each checked against its digest."""
    import json
    import sqlite3

    from batcher.inputs import scan_input
    from batcher.journal import _digest
    from batcher.planreport import plan_scan

    ids = ["9999999999999999999", R1, R2]
    path = tmp_path / "ids.csv"
    path.write_text("module,record_id,cadence_id\n"
                    + "".join(f"Leads,{r},{c}\n" for r in ids for c in (C1, C2)))
    scan = scan_input(path)
    with Journal.open(tmp_path / "j.journal", "fp") as j:
        j.load(scan.coded_tables(), lambda: plan_scan(scan))
        want = [(b.batch_id, b.record_ids, b.cadence_ids) for b in j.pending_batches()]
    with sqlite3.connect(tmp_path / "j.journal") as db:
        rows = db.execute("SELECT batch_id, module, record_ids, cadence_ids, positions"
                          " FROM batches").fetchall()
        assert all(isinstance(r[2], bytes) for r in rows)
        for batch_id, module, records, cadences, positions in rows:
            text = json.dumps(list(stored_ids(records)))
            db.execute("UPDATE batches SET record_ids = ?, digest = ? WHERE batch_id = ?",
                       (text, _digest(module, text, cadences, positions), batch_id))
    with Journal.open(tmp_path / "j.journal", "fp") as j:
        got = [(b.batch_id, b.record_ids, b.cadence_ids) for b in j.pending_batches()]
    assert got == want and {r for _, records, _ in got for r in records} == set(ids)


@pytest.mark.parametrize("stored", [b"\x01\x02\x03", "not json", '{"a": 1}', "[1, 2]"])
def test_record_ids_that_cannot_be_read_say_the_journal_is_damaged(stored) -> None:
    from batcher.errors import JournalError

    with pytest.raises(JournalError, match="damaged"):
        stored_ids(stored)


def test_the_digest_tells_ids_kept_as_integers_from_the_same_bytes_as_text() -> None:
    from batcher.journal import _digest

    text = '["1234567890123456"]'
    assert _digest("Leads", text, '["1"]', b"") != _digest("Leads", text.encode(), '["1"]', b"")


def test_a_run_waits_out_a_reader_that_holds_the_lock_a_moment(loaded: Path) -> None:
    """`batcher status` holds the lock shared for microseconds (to tell a live run from a pid a
    kill -9 left): a run starting then was refused "in use by another batcher run (pid <the
    killed run's>)". A reader that lets go within a moment is waited for."""
    lock = loaded.with_name(loaded.name + ".lock")
    lock.write_text("999999\n")  # the pid a run killed by kill -9 left
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import fcntl, os, sys, time
            fd = os.open(sys.argv[1], os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_SH)
            print("ready", flush=True)
            time.sleep(0.3)
        """), str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        with Journal.open(loaded, "fp-A") as j:
            assert list(j.pending_batches()) == PLAN
    finally:
        reader.wait(timeout=10)
        reader.stdout.close()
