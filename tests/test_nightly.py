"""A job spread over nights as a scheduler runs it: the same command every night (real
subprocesses, the sandbox over loopback), the night told by a shifted UTC clock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from batcher.sandbox.world import World

from .conftest import read_results, write_pairs
from .test_e2e import make_rows

ROOT = Path(__file__).resolve().parent.parent

#: `python -m batcher` with UTC "now" shifted by FAKE_DAYS days: the next night's same command
NIGHT = """
import os, sys
from datetime import datetime, timedelta
import batcher.models
class Shifted(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(days=int(os.environ["FAKE_DAYS"]))
batcher.models.datetime = Shifted
sys.argv[0] = "batcher"
from batcher.program import entry
entry()
"""


def night(day: int, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NIGHT, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env,
                               "FAKE_DAYS": str(day)})


def test_a_job_spread_over_nights_with_a_fixed_journal_resumes_with_the_same_command(
        tmp_path, serve):
    """Found by trying: `--results 'out/{date}.csv' --journal job.journal --max-calls N`
    stopped saying "after midnight, {date} makes it a new job … needs --results without
    {date}" — false: the fixed journal carries the job over midnight, and the next night's
    same command resumed it (its results file holding the whole job)."""
    rows = make_rows(400, 3, seed=4)
    live = serve(World.from_pairs(rows))
    write_pairs(tmp_path / "in.csv", rows)
    (tmp_path / "out").mkdir()
    command = ["run", "in.csv", "--results", "out/{date}.csv", "--journal", "job.journal",
               "--max-calls", "2"]
    codes, sent, answered = [], [], set()
    for day in range(10):
        done = night(day, *command, env=live.env, cwd=tmp_path)
        assert "Traceback" not in done.stderr
        codes.append(done.returncode)
        calls = live.sandbox.calls[len(sent):]
        sent.extend(calls)
        for call in calls:  # no double work: a batch answered on a night is never sent again
            key = (tuple(call.record_ids), tuple(call.cadence_ids))
            assert key not in answered, f"night {day}: {key} sent again"
        answered |= {(tuple(c.record_ids), tuple(c.cadence_ids)) for c in calls}
        dated = sorted((tmp_path / "out").glob("*.csv"))
        results = [p for p in dated if not p.name.endswith(".retry.csv")][-1]
        summary = json.loads(results.with_suffix(".summary.json").read_text())
        rows_now = read_results(results)
        assert len(rows_now) == len(rows)  # each night's file: the whole job, not the night's
        retry = read_results(results.with_suffix(".retry.csv"))
        left = sum(r["status"] == "not_sent" for r in rows_now)
        assert len(retry) == left == summary["by_status"].get("not_sent", 0)
        assert summary["calls"] == len(sent)
        if done.returncode == 3:
            assert "--max-calls 2 reached" in done.stderr
            # the same command is what continues it, tonight or tomorrow
            assert "makes it a new job" not in done.stderr, done.stderr
            assert "without {date}" not in done.stderr
            page = results.with_suffix(".report.html").read_text()
            assert "--journal" in page and "job.journal" in page
        else:
            break
    assert codes[-1] == 0 and set(codes[:-1]) == {3}, codes
    assert set(live.sandbox.removed) == set(rows)
    assert len(codes) > 2  # spread over nights indeed


def test_a_resumed_jobs_duration_is_the_jobs_in_run_and_report_alike(tmp_path, serve):
    """Found by trying: after a resume, `run`'s summary.json gave that run's seconds beside
    calls, credits and 429s of all the job's runs (calls ÷ duration on its page was wrong),
    while `report` on the same journal gave all runs' seconds: the two files disagreed.
    ``duration_s`` is now the job's everywhere; ``run_duration_s`` is the run's own."""
    rows = make_rows(300, 2, seed=5)
    live = serve(World.from_pairs(rows), latency=0.2)
    write_pairs(tmp_path / "in.csv", rows)
    run = ["run", "in.csv", "--results", "out.csv", "--concurrency", "1"]
    first = night(0, *run, "--max-calls", "2", env=live.env, cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    one = json.loads((tmp_path / "out.summary.json").read_text())
    assert one["run_duration_s"] == one["duration_s"] >= 0.4
    second = night(0, *run, env=live.env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    two = json.loads((tmp_path / "out.summary.json").read_text())
    assert two["run_duration_s"] >= 0.2 and two["calls"] > 2
    assert two["duration_s"] == round(one["duration_s"] + two["run_duration_s"], 3)
    # the printed line and the page say both, the job's first
    assert re.search(rf"{two['calls']} calls, .* {two['duration_s']:.1f} s "
                     rf"\(this run {two['run_duration_s']:.1f} s\)", second.stderr), second.stderr
    page = (tmp_path / "out.report.html").read_text()
    assert f'data-metric="duration_s" data-value="{two["duration_s"]}"' in page
    assert f'data-metric="run_duration_s" data-value="{two["run_duration_s"]}"' in page
    report = night(0, "report", "--journal", "out.journal", "--results", "again.csv",
                   env=live.env, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    again = json.loads((tmp_path / "again.summary.json").read_text())
    assert again["duration_s"] == two["duration_s"]
    assert again["run_duration_s"] is None  # a report is of the job, not of a run
