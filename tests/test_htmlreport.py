"""The HTML report: built from a real job's journal (sandbox over loopback, flaky and throttled),
checked as text (self-contained, escaped, small) and rendered by a real headless browser, whose
DOM must show the numbers of ``summary.json``. Also the call log it reads from the journal."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pytest

from batcher import htmlreport, report
from batcher.htmlreport import Counts, Tally, report_path, write_report
from batcher.job import RunSettings, run_job
from batcher.journal import Journal
from batcher.models import Batch
from batcher.report import UnplannedResults, write_results
from batcher.retry import RetryPolicy
from batcher.sandbox.world import World

from .conftest import journal_calls, write_pairs
from .test_e2e import make_rows

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no headless browser: neither `chromium` nor `chromium-browser` is on "
    "PATH (.ci/run installs Debian's chromium; here: apt-get install chromium)")

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
FAST_RETRY = RetryPolicy(attempts=8, base=0.01, max_wait=0.2, min_wait_on_zero_retry_after=0.01)
# a resource the page would load from the network: src/href/url() to http(s) or //host
NETWORK_LOAD = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)\s*(?:https?:)?//""",
                          re.IGNORECASE)


@pytest.fixture
def job(tmp_path, serve):
    """A finished job with invalid rows (one hostile), retries and 429s; its report written.
    Returns (results path, report path, summary.json as a dict, exit code)."""
    rows = make_rows(300, 20, seed=7, max_k=3)
    # 2 calls at a time, 20 ms each, for a client sending 6: the sandbox answers 429s
    live = serve(World.from_pairs(rows), fault_profile="flaky", seed=3, concurrency_limit=2,
                 latency=0.02)
    bad = [("Leads", HOSTILE, rows[0][2]), ("Leads", "12ab", rows[1][2]), ("", rows[2][1], "")]
    inp = write_pairs(tmp_path / "in.csv", rows + bad)
    results = tmp_path / "out.csv"
    result = run_job(RunSettings(input=inp, results=results, concurrency=6, retry=FAST_RETRY,
                                 quiet=True, timeout=2.0), live.env)
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    with Journal.open(tmp_path / "out.journal", None) as journal:
        journal.set_meta("cadence_names", {rows[0][2]: f"Onboarding {HOSTILE} & co\u202eXX"})
        page = write_report(journal, result.summary, report_path(results),
                            command=f"batcher run {inp} --results {results}",
                            exit_code=result.exit_code)
    return results, page, summary, result.exit_code


def test_report_is_self_contained_escaped_and_small(job):
    results, page, summary, _ = job
    assert page == results.with_name("out.report.html")
    assert page.stat().st_mode & 0o777 == 0o600
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html.lower()  # no script at all, the hostile texts escaped
    assert f"<code>{ESCAPED}</code>" in html  # the example row's record id
    assert f"Onboarding {ESCAPED} &amp; co" in html  # the cadence's name
    assert "\u202e" not in html and "co\\u202eXX" in html  # an RTL override said, not obeyed
    assert not NETWORK_LOAD.search(html), NETWORK_LOAD.search(html)
    assert "@import" not in html and "<link" not in html
    assert len(html) < 100_000  # aggregates only
    assert summary["throttled"] > 0 and summary["retries"] > 0  # the job exercised both


@needs_browser
def test_browser_renders_the_totals_of_summary_json(job, tmp_path):
    _, page, summary, exit_code = job
    shown = _metrics(_browse(tmp_path, "--dump-dom", page.as_uri()))

    for key in ("rows", "calls", "credits", "retries", "throttled", "retry_rows"):
        assert _int(shown[key]) == summary[key], key
    assert float(shown["duration_s"][1]) == summary["duration_s"]
    assert shown["reconcile"][0].strip() == summary["reconcile"]
    assert _int(shown["exit_code"]) == exit_code
    for status, n in summary["by_status"].items():
        assert _int(shown[f"status.{status}"]) == n, status
    for status, codes in summary["by_code"].items():
        for code, n in codes.items():
            assert _int(shown[f"code.{status}.{code}"]) == n, (status, code)
    # the per-cadence table adds up to the same rows, status by status
    assert _int(shown["cadences.pairs"]) == summary["rows"]
    for status in ("unenrolled", "not_enrolled", "failed", "invalid"):
        assert _int(shown[f"cadences.{status}"]) == summary["by_status"].get(status, 0), status
    # the call log saw every call the counters counted, and every 429
    assert _int(shown["timeline.calls"]) == summary["calls"]
    assert _int(shown["timeline.throttled"]) == summary["throttled"]

    picture = tmp_path / "report.png"
    _browse(tmp_path, f"--screenshot={picture}", "--window-size=1280,2000", page.as_uri())
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000


def test_a_job_stopped_before_its_plan_gets_the_summary_parts(tmp_path):
    table = pa.table({
        "row": pa.array([1, 2], pa.int64()), "module": ["Leads", "Leads"],
        "record_id": ["554023000001000001", HOSTILE], "cadence_id": ["554023000004000001"] * 2,
        "status": ["valid", "invalid"], "code": [None, "INVALID_INPUT"],
        "reason": [None, f"bad record id {HOSTILE}"]})
    source = UnplannedResults(2, lambda: [table], "2024-01-01T00:00:00.000Z",
                              "not sent: bad credentials")
    summary = write_results(source, tmp_path / "out.csv", duration_s=0.2,
                            extra={"aborted": "bad credentials"})

    html = write_report(source, summary, tmp_path / "out.report.html",
                        command="batcher run in.csv --results out.csv").read_text()

    assert "stopped before its plan was loaded" in html
    assert 'data-metric="status.not_sent">1<' in html and 'data-metric="exit_code">3<' in html
    assert 'data-metric="cadences.pairs">2<' in html  # counted from the reader's rows
    assert "Slowest batches" not in html and "<script" not in html
    assert f"bad record id {ESCAPED}" in html  # the message, escaped


@pytest.mark.parametrize("listed", [1000, 350])  # the summary lists them all, or 350
def test_many_cadences_are_cut_and_still_add_up(tmp_path, monkeypatch, listed):
    monkeypatch.setattr(report, "BY_CADENCE_MAX", listed)
    cadences = [str(554023000004000000 + i) for i in range(400)]
    records = [str(554023000001000000 + i) for i in range(50)]
    rows = [("Leads", r, c, "valid", None, f"b{i}") for i, c in enumerate(cadences)
            for r in records]
    with Journal.open(tmp_path / "j.journal", "fp") as journal:
        plan = [Batch(f"b{i}", "Leads", tuple(records), (c,)) for i, c in enumerate(cadences)]
        journal.load(_rows_table(rows), plan)
        tally = Tally(journal)
        summary = write_results(tally, tmp_path / "out.csv", duration_s=1.0)
        journal.iter_result_chunks = None  # the report must not read the rows a second time
        html = write_report(tally, summary, tmp_path / "out.report.html",
                            command="batcher run in.csv --results out.csv").read_text()

    assert "100 more cadences" in html
    assert f'data-metric="cadences.pairs">{len(rows):,}<' in html
    assert html.count("<tr>") < 400 and len(html) < 150_000
    assert "No call was logged." in html and 'data-metric="exit_code">3<' in html  # not sent


def test_most_retried_batches_count_the_calls_of_a_batch_its_stopped_run_left_open(tmp_path):
    """Found by trying: a job stopped (signal, --max-calls) in a storm of 429s said "No batch was
    sent more than once" beside a "Slowest batches" line of the same batch with 2 calls: its
    attempts are recorded with its answer, and it had none."""
    records = [str(554023000001000000 + i) for i in range(3)]
    rows = [("Leads", r, "554023000004000001", "valid", None, b)
            for r, b in zip(records, ("b1", "b1", "b2"), strict=True)]
    with Journal.open(tmp_path / "j.journal", "fp") as journal:
        journal.load(_rows_table(rows), [
            Batch("b1", "Leads", tuple(records[:2]), ("554023000004000001",)),
            Batch("b2", "Leads", (records[2],), ("554023000004000001",))])
        for at in (1000.0, 1001.0, 1002.5):  # b1: three calls answered 429, then the stop
            journal.log_call(at, "b1", 429, True, 0.01)
        journal.add_counters(calls=3, throttled=3, retries=2)
        tally = Tally(journal)
        summary = write_results(tally, tmp_path / "out.csv", duration_s=3.0,
                                extra={"aborted": "interrupted by SIGTERM"})
        html = write_report(tally, summary, tmp_path / "out.report.html",
                            command="batcher run in.csv --results out.csv").read_text()

    assert "No batch was sent more than once" not in html
    retried = html.split("Most retried batches", 1)[1].split("Slowest batches", 1)[0]
    assert re.search(r"<code>b1</code>.*?<td class=\"n\">3</td>", retried, re.S), retried
    assert "<code>b2</code>" not in retried


def test_counts_group_messages_by_reason_with_the_first_examples_across_chunks(monkeypatch):
    ids = [f"x{i}" for i in range(5)]
    rows = [(i + 1, "invalid", "INVALID_INPUT", f"bad record id: '{r}' is not a Zoho id", r)
            for i, r in enumerate(ids)]
    rows += [(6, "failed", "HTTP_500", "record 554023000001000006 failed", "554023000001000006"),
             (7, "failed", "HTTP_500", "record 554023000001000007 failed", "554023000001000007"),
             (8, "unenrolled", "SUCCESS", None, "554023000001000008")]
    counts = Counts()
    for part in (rows[:2], rows[2:]):  # two chunks: examples and counts carry over
        counts.add(_results_table(part))

    top = counts.top_errors()
    assert [(e["status"], e["message"], e["rows"]) for e in top] == [
        ("invalid", "bad record id: … is not a Zoho id", 5), ("failed", "record … failed", 2)]
    assert [x["record_id"] for x in top[0]["examples"]] == ids[:3]

    monkeypatch.setattr(htmlreport, "_MAX_MESSAGES", 1)  # memory bound: later messages counted
    capped = Counts()
    capped.add(_results_table(rows))
    assert len(capped.errors) == 1 and capped.untracked == 2


def test_call_log_rides_on_the_next_commit_and_aggregates_per_second(tmp_path):
    with Journal.open(tmp_path / "j.journal", "fp") as journal:
        journal.log_call(1000.2, "b1", 200, False, 0.1)
        journal.log_call(1000.7, "b1", 429, True, 0.2)
        journal.log_call(1002.1, "b2", None, False, 3.0)
        assert journal.calls_per_second() == []  # no commit of its own
        journal.add_counters()  # the next commit, whatever it writes
        assert journal.calls_per_second() == [(1000, 2, 1), (1002, 1, 0)]


def test_a_journal_made_before_the_call_log_opens_and_gains_it(tmp_path):
    path = tmp_path / "j.journal"
    Journal.open(path, "fp").close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE calls")
    with Journal.open(path, "fp") as journal:
        journal.log_call(5.0, "b1", 200, False, 0.1)
        journal.add_counters()
        assert journal.calls_per_second() == [(5, 1, 0)]


def _results_table(rows: list[tuple]) -> pa.Table:
    """Results rows from (row, status, code, message, record_id), all in one Leads cadence."""
    row, status, code, message, record = (list(c) for c in zip(*rows, strict=True))
    n = len(rows)
    return pa.table({"row": row, "module": ["Leads"] * n, "record_id": record,
                     "cadence_id": ["554023000004000001"] * n, "status": status, "code": code,
                     "message": pa.array(message, pa.string())})


def _rows_table(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    names = ("module", "record_id", "cadence_id", "status", "reason", "batch_id")
    return pa.table({"row": pa.array(range(1, len(rows) + 1), pa.int64()),
                     **{n: pa.array(c, pa.string()) for n, c in zip(names, cols, strict=True)}})


def _browse(tmp_path: Path, *args: str) -> str:
    """Headless chromium on a page; its stdout (the DOM for ``--dump-dom``)."""
    got = subprocess.run(
        [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=120, check=False)
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout


class _MetricReader(HTMLParser):
    """data-metric → (text, data-value) of the elements that carry one (text-only elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, tuple[str, str | None]] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-metric" in a:
            self._open = a["data-metric"]
            self.found[self._open] = ("", a.get("data-value"))

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            text, value = self.found[self._open]
            self.found[self._open] = (text + data, value)


def _metrics(dom: str) -> dict[str, tuple[str, str | None]]:
    reader = _MetricReader()
    reader.feed(dom)
    assert reader.found, "the browser's DOM has no data-metric element"
    return reader.found


def _int(shown: tuple[str, str | None]) -> int:
    return int(shown[0].strip().replace(",", ""))


def test_the_command_that_resumes_a_job_keeps_its_sending_flags(tmp_path, serve):
    """The page's "next" command is the same command: a job stopped by --max-calls and run at
    --concurrency 1 with --halt-on-failures resumes with them (it dropped the last two)."""
    rows = make_rows(300, 20, seed=5, max_k=3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", concurrency=1,
                                 max_calls=1, halt_on_failures=20.0, quiet=True), live.env)
    assert result.exit_code == 3
    html = report_path(tmp_path / "out.csv").read_text()
    command = re.search(r'data-metric="command">([^<]*)<', html)
    assert command, "no command on the page"
    args = command.group(1).split()
    for flag, value in (("--concurrency", "1"), ("--max-calls", "1"),
                        ("--halt-on-failures", "20")):  # as typed, not "20.0"
        assert args[args.index(flag) + 1] == value, command.group(1)


def test_the_command_that_runs_the_retry_file_keeps_the_jobs_sending_flags(tmp_path):
    """Found by trying: a finished job's page named the run of its retry file without the
    job's --max-calls budget, --concurrency and --no-preflight: copied as shown, it ran the
    retry file at full pace and unchecked."""
    import httpx

    from batcher.job import Transports

    rows = make_rows(30, 2)
    inp = write_pairs(tmp_path / "in.csv", rows)

    def answers_nobody(request: httpx.Request) -> httpx.Response:  # every id MISSING_IN_ANSWER
        return httpx.Response(200, json={"data": []})

    env = {"ZOHO_ACCESS_TOKEN": "t", "ZOHO_API_DOMAIN": "http://127.0.0.1:9"}
    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", concurrency=2,
                                 max_calls=500, preflight=False, quiet=True), env,
                     transports=Transports(api=httpx.MockTransport(answers_nobody)))
    assert result.exit_code == 1 and result.summary.retry_rows == len(rows)
    html = report_path(tmp_path / "out.csv").read_text()
    args = re.search(r'data-metric="command">([^<]*)<', html).group(1).split()
    assert args[2] == str(tmp_path / "out.retry.csv"), args
    assert args[args.index("--concurrency") + 1] == "2"
    assert args[args.index("--max-calls") + 1] == "500"
    assert "--no-preflight" in args


def test_the_command_that_resumes_a_job_keeps_where_zoho_is(tmp_path, serve):
    """Found by trying: a job whose API domain came from --api-domain printed a command without
    it, which sent to the default data centre."""
    rows = make_rows(300, 20, seed=5, max_k=3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    env = {k: v for k, v in live.env.items() if k != "ZOHO_API_DOMAIN"}
    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", max_calls=1,
                                 api_domain=live.base_url, token_cache=False, quiet=True), env)
    assert result.exit_code == 3
    html = report_path(tmp_path / "out.csv").read_text()
    args = re.search(r'data-metric="command">([^<]*)<', html).group(1).split()
    assert args[args.index("--api-domain") + 1] == live.base_url
    assert "--no-token-cache" in args


def test_the_summary_file_names_the_report_beside_it(tmp_path, serve):
    """summary.json said "report_path": null although the page was written (after it)."""
    rows = make_rows(40, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", quiet=True), live.env)
    doc = json.loads((tmp_path / "out.summary.json").read_text())
    page = report_path(tmp_path / "out.csv")
    assert doc["report_path"] == result.summary.report_path == str(page)
    assert page.exists() and doc["rows"] == len(rows)


def test_a_dry_runs_page_says_its_command_runs_the_real_job_not_a_resume(tmp_path, serve):
    """Found by trying: a dry run's page said its command "resumes the job" — there is no job
    to resume (a dry run keeps no journal): the command runs the real one from the start."""
    rows = make_rows(40, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    result = run_job(RunSettings(input=inp, results=tmp_path / "out.csv", dry_run=True,
                                 quiet=True), live.env)
    assert result.exit_code == 0
    html = report_path(tmp_path / "out.csv").read_text()
    assert "resumes the job" not in html
    assert f"runs the real job: sends the {len(rows):,} rows this dry run planned" in html
    assert len(live.sandbox.calls) == 0


@needs_browser
def test_a_job_killed_with_calls_in_flight_says_the_same_calls_everywhere(tmp_path, serve):
    """Found by trying: ``kill -9`` while calls were out, then ``batcher report``: the summary,
    its line and the page's card counted the calls in flight (counted as they leave), which the
    call log — the page's timeline — never got (logged once answered): 12 calls, 9 on the
    timeline, and nothing said why; the duration, counted to the last logged call, showed as a
    plain figure. Now every figure agrees: the timeline's calls plus the calls whose outcome is
    unknown are the calls, said in summary.json, on stderr and on the page; and the duration
    says it is a lower bound."""
    import os
    import signal
    import sys
    import time

    rows = make_rows(300, 10, seed=37, base=554023000037000000, max_k=2)
    live = serve(World.from_pairs(rows), latency=0.4)
    inp = write_pairs(tmp_path / "in.csv", rows)
    journal = tmp_path / "out.journal"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "run", str(inp), "--results",
                             str(tmp_path / "out.csv"), "--concurrency", "3", "--no-preflight"],
                            env={**os.environ, **live.env}, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        counted, logged = journal_calls(journal)
        if logged >= 2 and counted > logged:  # answered calls, and counted ones still out
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the job ended before the kill"
    counted, logged = journal_calls(journal)
    assert counted > logged >= 2, (counted, logged)

    got = subprocess.run([sys.executable, "-m", "batcher", "report", "--journal", str(journal),
                          "--results", str(tmp_path / "again.csv")],
                         env={**os.environ, **live.env}, cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 3, got.stderr
    summary = json.loads((tmp_path / "again.summary.json").read_text())
    assert summary["calls"] == counted
    assert summary["calls_outcome_unknown"] == counted - logged
    assert summary["duration_lower_bound"] is True
    said = got.stdout + got.stderr
    assert f"{counted - logged} of the {counted} calls were in flight when a run was killed" \
        in said, said
    assert f"at least {summary['duration_s']:.1f} s" in said, said

    page = tmp_path / "again.report.html"
    shown = _metrics(_browse(tmp_path, "--dump-dom", page.as_uri()))
    assert _int(shown["calls"]) == summary["calls"]
    assert _int(shown["calls_outcome_unknown"]) == summary["calls_outcome_unknown"]
    assert _int(shown["timeline.calls"]) + _int(shown["calls_outcome_unknown"]) == \
        _int(shown["calls"])
    assert "whether Zoho applied them is unknown" in shown["unknown_calls"][0]
    assert shown["duration_s"][0].strip().startswith("at least ")
    assert float(shown["duration_s"][1]) == summary["duration_s"]
    assert "lower bound" in shown["duration_lower_bound"][0]
