"""End to end: `run_job` over real loopback HTTP against the sandbox, checked against its truth.

The sandbox records every pair every call named and every pair it actually removed, so these
tests prove exactness and completeness from the server's side, not from the client's report.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from batcher.job import RunSettings, Transports, run_job
from batcher.retry import RetryPolicy
from batcher.sandbox.world import CUSTOM_VIEW, World

from .conftest import REFRESH, SECRET, read_results, write_pairs

FAST_RETRY = RetryPolicy(attempts=8, base=0.01, max_wait=0.2, min_wait_on_zero_retry_after=0.01)


def make_rows(n_records: int, n_cadences: int, module: str = "Leads", seed: int = 1,
              base: int = 554023000001000000, max_k: int | None = None
              ) -> list[tuple[str, str, str]]:
    rnd = random.Random(seed)
    family = base // 1000000 % 1000  # each record range gets cadences of its own
    cadences = [str(554023000004000000 + family * 100 + j) for j in range(n_cadences)]
    rows = []
    for i in range(n_records):
        for c in sorted(rnd.sample(cadences, rnd.randint(1, max_k or n_cadences))):
            rows.append((module, str(base + i), c))
    return rows


def settings(tmp_path: Path, inp: Path, **kw) -> RunSettings:
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("quiet", True)
    kw.setdefault("timeout", 2.0)
    return RunSettings(input=inp, results=tmp_path / "out.csv", **kw)


def assert_exact(sandbox, rows) -> None:
    """Invariant 1: no call named a combination that was not an input pair."""
    asked = {(m, r, c) for m, r, c in rows}
    named = set(sandbox.named_pairs)
    assert named <= asked, f"calls named pairs never asked for: {sorted(named - asked)[:5]}"


def by_pair(results):
    return {(r["module"], r["record_id"], r["cadence_id"]): r for r in results}


def test_clean_job_unenrolls_every_pair_and_reports_every_row(tmp_path, serve):
    rows = make_rows(250, 7) + make_rows(40, 3, module="Contacts", base=554023000002000000)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)

    result = run_job(settings(tmp_path, inp), live.env)

    assert result.exit_code == 0
    assert_exact(live.sandbox, rows)
    assert set(live.sandbox.removed) == set(rows)  # completeness, seen from the server
    results = read_results(tmp_path / "out.csv")
    assert [int(r["row"]) for r in results] == list(range(1, len(rows) + 1))
    assert {r["status"] for r in results} == {"unenrolled"}
    for r, (module, rec, cad) in zip(results, rows, strict=True):
        assert (r["module"], r["record_id"], r["cadence_id"]) == (module, rec, cad)
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["reconciled"] and summary["rows"] == len(rows)
    # the planner's promise: far fewer calls than pairs, never more than 5 x 100 per call
    assert len(live.sandbox.calls) < len(rows) / 3
    assert all(len(c.record_ids) <= 100 and len(c.cadence_ids) <= 5 for c in live.sandbox.calls)


def test_not_enrolled_bad_rows_and_duplicates(tmp_path, serve):
    rows = make_rows(30, 3)
    world = World.from_pairs(rows[1:])  # the first pair is asked for but not enrolled
    world.add_record("Leads", rows[0][1])
    live = serve(world)
    bad = [("Leads", "5.54023E+17", rows[0][2]), ("", rows[0][1], rows[0][2])]
    inp = write_pairs(tmp_path / "in.csv", rows + bad + [rows[2]])

    result = run_job(settings(tmp_path, inp), live.env)

    assert result.exit_code == 1  # invalid rows
    results = read_results(tmp_path / "out.csv")
    assert len(results) == len(rows) + 3
    assert results[0]["status"] == "not_enrolled"
    assert {r["status"] for r in results[1:len(rows)]} == {"unenrolled"}
    assert [r["status"] for r in results[len(rows):]] == ["invalid", "invalid", "duplicate"]
    assert "spreadsheet" in results[len(rows)]["message"]
    assert "row 3" in results[-1]["message"]
    assert_exact(live.sandbox, rows)


def test_a_custom_module_in_two_letter_cases_sends_each_pair_once(tmp_path, serve):
    """Zoho takes ``partners__c`` for ``Partners__c``: a pair asked under both spellings is one
    pair, sent once (the later row a duplicate), and the records of both share a call."""
    rec, rec2, cad = "554023000001000001", "554023000001000002", "554023000004000001"
    world = World.from_pairs([("Partners__c", rec, cad), ("Partners__c", rec2, cad)])
    live = serve(world)
    inp = write_pairs(tmp_path / "in.csv", [("Partners__c", rec, cad), ("partners__c", rec, cad),
                                            ("PARTNERS__C", rec2, cad)])

    result = run_job(settings(tmp_path, inp), live.env)

    assert result.exit_code == 0
    assert [(c.record_ids, c.cadence_ids) for c in live.sandbox.calls] == [((rec, rec2), (cad,))]
    results = read_results(tmp_path / "out.csv")
    assert [(r["module"], r["status"]) for r in results] == [
        ("Partners__c", "unenrolled"), ("Partners__c", "duplicate"),
        ("Partners__c", "unenrolled")]


def test_preflight_marks_unknown_and_non_manual_cadences_invalid_without_a_call(tmp_path, serve):
    rows = make_rows(20, 2)
    world = World.from_pairs(rows)
    auto = world.add_cadence("Leads", CUSTOM_VIEW)
    records = list(dict.fromkeys(r for _, r, _ in rows))[:5]
    for rec in records:
        world.enroll("Leads", rec, auto.id)
    unknown = "554023000009999999"
    extra = [("Leads", rec, auto.id) for rec in records] + [("Leads", records[0], unknown)]
    live = serve(world, cadence_page_size=2)  # the org's 3 cadences come in 2 pages
    inp = write_pairs(tmp_path / "in.csv", rows + extra)

    result = run_job(settings(tmp_path, inp), live.env)

    assert result.exit_code == 1
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["credits"] == summary["calls"] + 2  # the preflight's two GETs cost credits too
    res = by_pair(read_results(tmp_path / "out.csv"))
    for pair in extra[:5]:
        assert (res[pair]["status"], res[pair]["code"]) == ("invalid", "NOT_ALLOWED")
    assert (res[extra[5]]["status"], res[extra[5]]["code"]) == ("invalid", "INVALID_DATA")
    named_cadences = {c for _, _, c in live.sandbox.named_pairs}
    assert auto.id not in named_cadences and unknown not in named_cadences
    assert set(live.sandbox.removed) == set(rows)


def test_without_preflight_the_api_rejects_and_the_rest_is_resent(tmp_path, serve):
    rows = make_rows(40, 3)
    world = World.from_pairs(rows)
    auto = world.add_cadence("Leads", CUSTOM_VIEW)
    unknown_record = "554023000007777777"
    extra = [("Leads", rec, auto.id) for rec in list(dict.fromkeys(r for _, r, _ in rows))[:3]]
    extra += [("Leads", unknown_record, rows[0][2])]
    live = serve(world)
    inp = write_pairs(tmp_path / "in.csv", rows + extra)

    result = run_job(settings(tmp_path, inp, preflight=False), live.env)

    assert result.exit_code == 1
    res = by_pair(read_results(tmp_path / "out.csv"))
    assert {res[p]["code"] for p in extra[:3]} == {"NOT_ALLOWED"}
    assert {res[p]["status"] for p in extra} == {"failed"}
    assert res[extra[3]]["code"] == "INVALID_DATA"
    assert {res[p]["status"] for p in rows} == {"unenrolled"}
    assert set(live.sandbox.removed) == set(rows)
    assert_exact(live.sandbox, rows + extra)


@pytest.mark.parametrize("shape,scheduled,status", [("v8", "off", "unenrolled"),
                                                     ("v7", "now", "scheduled")])
def test_other_answer_shapes(tmp_path, serve, shape, scheduled, status):
    rows = make_rows(30, 4)
    live = serve(World.from_pairs(rows), answer_shape=shape, scheduled=scheduled)
    inp = write_pairs(tmp_path / "in.csv", rows)
    result = run_job(settings(tmp_path, inp), live.env)
    assert result.exit_code == 0
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {status}
    assert_exact(live.sandbox, rows)


def test_max_calls_stops_then_the_same_command_resumes(tmp_path, serve):
    rows = make_rows(600, 6)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)

    first = run_job(settings(tmp_path, inp, max_calls=3, concurrency=2), live.env)
    assert first.exit_code == 3
    assert len(live.sandbox.calls) == 3
    statuses = [r["status"] for r in read_results(tmp_path / "out.csv")]
    assert "not_sent" in statuses and "unenrolled" in statuses
    retry_rows = read_results(tmp_path / "out.retry.csv")
    assert len(retry_rows) == statuses.count("not_sent")

    # the same command again: a budget per run, so it goes on with three more calls
    again = run_job(settings(tmp_path, inp, max_calls=3, concurrency=2), live.env)
    assert again.exit_code == 3
    assert len(live.sandbox.calls) == 6
    second = run_job(settings(tmp_path, inp), live.env)
    assert second.exit_code == 0
    assert set(live.sandbox.removed) == set(rows)
    seen = [(c.record_ids, c.cadence_ids) for c in live.sandbox.calls if c.http_status == 200]
    assert len(seen) == len(set(seen)), "an answered batch was sent again"
    # a third run has nothing left to do and sends nothing
    calls = len(live.sandbox.calls)
    assert run_job(settings(tmp_path, inp), live.env).exit_code == 0
    assert len(live.sandbox.calls) == calls


def test_other_input_against_the_same_journal_is_refused(tmp_path, serve):
    rows = make_rows(10, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    run_job(settings(tmp_path, inp), live.env)
    other = write_pairs(tmp_path / "other.csv", rows[:-1])
    from batcher.errors import JournalError

    with pytest.raises(JournalError):
        run_job(settings(tmp_path, other), live.env)


def test_dry_run_sends_nothing_and_reports_not_sent(tmp_path, serve):
    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    result = run_job(settings(tmp_path, inp, dry_run=True), live.env)
    assert result.exit_code == 0
    assert live.sandbox.calls == [] or len(live.sandbox.calls) == 0
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {"not_sent"}
    assert not (tmp_path / "out.journal").exists()


@pytest.mark.parametrize("profile", ["flaky", "throttled", "lossy", "slow", "short_tokens", "mix"])
def test_fault_profiles_keep_the_invariants(tmp_path, serve, profile):
    rows = make_rows(400, 60, seed=3, max_k=2)  # ~60 calls: enough for every fault to show
    live = serve(World.from_pairs(rows), fault_profile=profile, seed=11, slow_seconds=2.5,
                 retry_after_max=1)
    inp = write_pairs(tmp_path / "in.csv", rows)

    result = run_job(settings(tmp_path, inp, concurrency=6, timeout=1.0), live.env)

    assert result.exit_code in (0, 1)
    assert_exact(live.sandbox, rows)
    calls = live.sandbox.calls
    if profile == "slow":  # a call held past the client's timeout is retried
        assert result.summary.retries > 0, "the profile injected nothing: test proves nothing"
    elif profile != "short_tokens":
        assert any(c.fault for c in calls), "the profile injected nothing: test proves nothing"
    results = read_results(tmp_path / "out.csv")
    assert len(results) == len(rows)
    removed = set(live.sandbox.removed)
    for r in results:
        pair = (r["module"], r["record_id"], r["cadence_id"])
        # completeness: every enrolled pair is gone, or its row says it failed and may be retried
        assert pair in removed or (r["status"] == "failed" and r["retryable"] == "true"), r
        assert r["status"] != "not_sent"
    # nothing answered was sent again: a second run re-sends only the failed rows' batches
    failed = sum(r["status"] == "failed" for r in results)
    before = len(live.sandbox.calls)
    run_job(settings(tmp_path, inp), live.env)
    if not failed:
        assert len(live.sandbox.calls) == before


def test_expiring_tokens_are_refreshed_and_the_job_completes(tmp_path, serve):
    rows = make_rows(400, 40, seed=4, max_k=2)  # ~40 calls, 2 at a time, 0.1 s each: ~2 s
    live = serve(World.from_pairs(rows), token_ttl=0.4, latency=0.1)
    inp = write_pairs(tmp_path / "in.csv", rows)
    result = run_job(settings(tmp_path, inp, concurrency=2), live.env)
    assert result.exit_code == 0
    assert live.sandbox.refresh_count >= 3  # the job outlived several tokens
    assert live.sandbox.refresh_count <= 10  # ...without a refresh storm
    assert set(live.sandbox.removed) == set(rows)


def test_revoked_token_is_refreshed_once_and_the_job_goes_on(tmp_path, serve):
    rows = make_rows(200, 5)
    live = serve(World.from_pairs(rows), latency=0.01)
    inp = write_pairs(tmp_path / "in.csv", rows)
    first = run_job(settings(tmp_path, inp, max_calls=2), live.env)
    assert first.exit_code == 3
    live.sandbox.revoke_tokens()
    refreshes = live.sandbox.refresh_count
    assert run_job(settings(tmp_path, inp), live.env).exit_code == 0
    assert live.sandbox.refresh_count - refreshes <= 2
    assert set(live.sandbox.removed) == set(rows)


def test_bad_credentials_abort_with_exit_3_and_leak_nothing(tmp_path, serve, capsys):
    rows = make_rows(10, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    env = dict(live.env, ZOHO_CLIENT_SECRET="wrong-" + SECRET)
    result = run_job(settings(tmp_path, inp, quiet=False), env)
    assert result.exit_code == 3
    assert result.aborted and "invalid_client" in result.aborted
    assert live.sandbox.calls == [] or len(live.sandbox.calls) == 0
    assert {r["status"] for r in read_results(tmp_path / "out.csv")} == {"not_sent"}
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and REFRESH not in out.out + out.err


@pytest.mark.parametrize("config,code", [({"scopes": ("ZohoCRM.settings.cadences.READ",)},
                                          "OAUTH_SCOPE_MISMATCH"),
                                         ({"no_permission": True}, "NO_PERMISSION")])
def test_missing_scope_or_permission_aborts_resumably(tmp_path, serve, config, code):
    rows = make_rows(10, 2)
    live = serve(World.from_pairs(rows), **config)
    inp = write_pairs(tmp_path / "in.csv", rows)
    result = run_job(settings(tmp_path, inp), live.env)
    assert result.exit_code == 3
    assert code in result.aborted
    assert not live.sandbox.removed


def test_no_secret_reaches_any_file_or_output(tmp_path, serve, capsys):
    rows = make_rows(60, 4)
    live = serve(World.from_pairs(rows), fault_profile="mix", seed=5, token_ttl=1.0)
    inp = write_pairs(tmp_path / "in.csv", rows)
    run_job(settings(tmp_path, inp, quiet=False), live.env)
    out = capsys.readouterr()
    blobs = [out.out.encode(), out.err.encode()]
    blobs += [p.read_bytes() for p in tmp_path.iterdir() if p.is_file()]
    issued = list(live.sandbox._tokens)  # every access token the server issued
    for secret in [SECRET, REFRESH, *issued]:
        for blob in blobs:
            assert secret.encode() not in blob


def test_preflight_without_the_settings_scope_warns_and_goes_on(tmp_path, serve):
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows), scopes=("ZohoCRM.modules.ALL",))
    inp = write_pairs(tmp_path / "in.csv", rows)
    err = io.StringIO()
    result = run_job(settings(tmp_path, inp, quiet=False), live.env, stream=err)
    assert result.exit_code == 0
    assert "preflight skipped" in err.getvalue()
    assert "ZohoCRM.settings.cadences.READ" in err.getvalue()
    assert set(live.sandbox.removed) == set(rows)


def test_the_same_command_resends_retryable_failures_and_converges(tmp_path, serve):
    """After a finished job, re-running it re-sends exactly the rows failed with retryable true
    (issue 9: a nightly re-run converges), a bounded number of times per job."""
    rows = make_rows(300, 20, seed=5, max_k=3)
    live = serve(World.from_pairs(rows), fault_profile="flaky", seed=4)
    inp = write_pairs(tmp_path / "in.csv", rows)
    once = RetryPolicy(attempts=1, base=0.01, max_wait=0.05)

    first = run_job(settings(tmp_path, inp, retry=once, max_retry_rounds=1), live.env)
    assert first.exit_code == 1
    failed = {(r["module"], r["record_id"], r["cadence_id"])
              for r in read_results(tmp_path / "out.csv") if r["status"] == "failed"}
    assert failed and all(r["retryable"] == "true" for r in read_results(tmp_path / "out.csv")
                          if r["status"] == "failed")
    calls_before = len(live.sandbox.calls)

    second = run_job(settings(tmp_path, inp, retry=once, max_retry_rounds=1), live.env)
    resent = {(c.module, r, k) for c in live.sandbox.calls[calls_before:]
              for r in c.record_ids for k in c.cadence_ids}
    assert resent and resent <= failed  # only the failed pairs, and nothing answered before
    results = read_results(tmp_path / "out.csv")
    assert len(results) == len(rows)
    still = {(r["module"], r["record_id"], r["cadence_id"]) for r in results
             if r["status"] == "failed"}
    assert len(still) < len(failed)

    # the round of this job is spent: the same command sends nothing more...
    calls_before = len(live.sandbox.calls)
    err = io.StringIO()
    third = run_job(settings(tmp_path, inp, retry=once, max_retry_rounds=1, quiet=False),
                    live.env, stream=err)
    assert len(live.sandbox.calls) == calls_before
    assert third.exit_code == second.exit_code
    if still:  # the faults left some: the stop of the re-sends is said, not silent
        assert "spent its 1 retry round(s)" in err.getvalue()
    # ...and with rounds left and a patient policy, it converges
    final = run_job(settings(tmp_path, inp, max_retry_rounds=3), live.env)
    assert final.exit_code == 0
    assert set(live.sandbox.removed) == set(rows)
    assert_exact(live.sandbox, rows)


def test_a_budget_stopped_job_keeps_its_retry_rounds_for_when_it_is_finished(tmp_path, serve):
    """A job sent over several nights (--max-calls) spends no retry round while it still has
    batches to send: each night's resume used to re-send the failures so far and spend a round,
    so once the job finished, the same command no longer retried what failed on its last
    nights (the nightly re-run did not converge)."""
    rows = make_rows(120, 10, seed=5, max_k=3)
    live = serve(World.from_pairs(rows), fault_profile="flaky", seed=4)
    inp = write_pairs(tmp_path / "in.csv", rows)
    once = RetryPolicy(attempts=1, base=0.01, max_wait=0.05)
    nightly = settings(tmp_path, inp, retry=once, max_retry_rounds=1, max_calls=4,
                       concurrency=1)
    nights = [run_job(nightly, live.env) for _ in range(2)]
    assert [n.exit_code for n in nights] == [3, 3]
    assert nights[0].summary.by_status.get("failed")  # failed before the job was finished
    while (last := run_job(nightly, live.env)).exit_code == 3:
        nights.append(last)
        assert len(nights) < 40
    failed = {(r["module"], r["record_id"], r["cadence_id"])
              for r in read_results(tmp_path / "out.csv") if r["status"] == "failed"}
    assert failed and last.exit_code == 1  # finished, with failures worth retrying
    calls_before = len(live.sandbox.calls)
    err = io.StringIO()
    run_job(replace(nightly, quiet=False), live.env, stream=err)
    resent = {(c.module, r, k) for c in live.sandbox.calls[calls_before:]
              for r in c.record_ids for k in c.cadence_ids}
    assert "spent its 1 retry round" not in err.getvalue()
    assert resent and resent <= failed  # the job's one round, on the finished job's failures
    assert_exact(live.sandbox, rows)


def test_halt_on_failures_stops_a_list_of_unknown_ids_and_says_what_it_spent(tmp_path, serve):
    known = make_rows(10, 1)
    world = World.from_pairs(known)
    cadence = known[0][2]
    unknown = [("Leads", str(554023000009000000 + i), cadence) for i in range(3000)]
    live = serve(world)
    inp = write_pairs(tmp_path / "in.csv", unknown)

    result = run_job(settings(tmp_path, inp, halt_on_failures=50.0, concurrency=1), live.env)

    assert result.exit_code == 3
    assert "halted by --halt-on-failures 50" in result.aborted
    assert "calls (credits)" in result.aborted
    calls = len(live.sandbox.calls)
    assert calls < 30  # stopped after about 500 answered pairs, not 3,000 pairs later
    statuses = {r["status"] for r in read_results(tmp_path / "out.csv")}
    assert statuses == {"failed", "not_sent"}
    assert result.summary.credits >= calls


def test_the_halt_message_counts_the_answers_the_results_hold(tmp_path, serve):
    """Found by trying: at --concurrency 4 the halt line said "407 of the 556 pairs answered so
    far" while the results held 611 failed of 850 answered: the calls in flight when it
    tripped were answered (and recorded) after the line was made. It now counts them."""
    import re

    known = make_rows(10, 1)
    cadence = known[0][2]
    unknown = [("Leads", str(554023000009000000 + i), cadence) for i in range(3000)]
    live = serve(World.from_pairs(known), latency=0.05)
    inp = write_pairs(tmp_path / "in.csv", unknown)

    result = run_job(settings(tmp_path, inp, halt_on_failures=50.0, concurrency=4), live.env)

    assert result.exit_code == 3
    said = re.search(r"(\d+) of the (\d+) pairs answered (?:so far|this run) .* after (\d+) calls",
                     result.aborted)
    assert said, result.aborted
    refused, answered, calls = map(int, said.groups())
    statuses = [r["status"] for r in read_results(tmp_path / "out.csv")]
    assert refused == statuses.count("failed") == result.summary.by_status["failed"]
    assert answered == len(statuses) - statuses.count("not_sent")
    assert calls == result.summary.calls == len(live.sandbox.calls)
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["extra"]["aborted"] == result.aborted


def test_a_run_that_continues_a_job_says_so(tmp_path, serve):
    rows = make_rows(300, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    first = run_job(settings(tmp_path, inp, max_calls=1), live.env)
    assert first.exit_code == 3
    err = io.StringIO()
    again = run_job(settings(tmp_path, inp, quiet=False), live.env, stream=err)
    assert again.exit_code == 0
    assert f"batcher: resuming the job of {tmp_path / 'out.journal'}" in err.getvalue()


def test_retry_rounds_keep_the_inputs_column_names(tmp_path, serve):
    """The retry file carries the input's own columns under names a re-read gives back: each
    round's results name them as the first round's did (``status`` → ``input_status``, never
    ``input_input_status``)."""
    rows = make_rows(400, 3, seed=7)
    live = serve(World.from_pairs(rows))
    inp = tmp_path / "in.csv"
    with open(inp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["module", "record_id", "cadence_id", "status", "code", "Email"])
        w.writerows([*row, "hot", f"c{i}", f"u{i}@x.example"] for i, row in enumerate(rows))

    headers, retry_headers = [], []
    for n in range(3):  # one call a round: each leaves rows to retry
        out = tmp_path / f"round{n}.csv"
        result = run_job(replace(settings(tmp_path, inp, max_calls=1), results=out), live.env)
        assert result.exit_code == 3
        results = read_results(out)
        headers.append(list(results[0]))
        assert {r["input_status"] for r in results} == {"hot"}
        inp = out.with_name(out.stem + ".retry.csv")
        retry = read_results(inp)
        retry_headers.append(list(retry[0]))
        assert {r["status"] for r in retry} == {"hot"}
        assert all(r["code"].startswith("c") for r in retry)
    assert headers[0][-3:] == ["input_status", "input_code", "Email"]
    assert headers[1] == headers[0] and headers[2] == headers[0]
    assert retry_headers == [["module", "record_id", "cadence_id", "status", "code",
                              "Email"]] * 3


def test_calls_answered_invalid_token_are_counted_as_calls(tmp_path, serve):
    """Tokens revoked mid-job: each call answered 401 INVALID_TOKEN is sent again with a fresh
    token by the auth flow; it reached a server and counts in `calls` (it did not: the summary
    said 4 calls fewer than the server saw)."""
    import threading
    import time

    rows = make_rows(600, 5)
    live = serve(World.from_pairs(rows), latency=0.02)
    inp = write_pairs(tmp_path / "in.csv", rows)

    def revoke_once_under_way() -> None:
        deadline = time.monotonic() + 30
        while len(live.sandbox.calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.002)
        live.sandbox.revoke_tokens()

    threading.Thread(target=revoke_once_under_way, daemon=True).start()
    result = run_job(settings(tmp_path, inp, concurrency=4), live.env)
    assert result.exit_code == 0, result.aborted
    refused = [c for c in live.sandbox.calls if c.http_status == 401]
    assert refused, "no call was answered 401: revoke earlier"
    assert result.summary.calls == len(live.sandbox.calls)


class _LastCallHeld(httpx.AsyncBaseTransport):
    """The sandbox over loopback; the calls naming ``record`` (the list's last) wait, up to
    20 s, until the results being written beside ``results`` hold ``rows`` rows."""

    def __init__(self, record: str, results: Path, rows: int) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._record, self._results, self._rows = record.encode(), results, rows
        self.seen = 0  # rows the results being written held while the last call waited

    def _written(self) -> int:
        rows = 0
        for tmp in self._results.parent.glob(f".{self._results.name}.*.tmp"):
            with open(tmp, "rb") as fh:
                rows = max(rows, sum(1 for _ in fh) - 1)
        return rows

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and self._record in request.content:
            deadline = time.monotonic() + 20
            while self.seen < self._rows and time.monotonic() < deadline:
                self.seen = self._written()
                await asyncio.sleep(0.05)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _held_job(tmp_path, serve, held_by: type[_LastCallHeld], *, header: str = "", **kw):
    """A job of 12,000 records x 5 cadences, in order (60,000 rows), whose last call is held by
    ``held_by`` until 50,000 results rows are written: (rows, live, transport, result).
    ``header``: more columns (",a,b"), their values the row's number; ``kw``: run_job's
    ``stream``, and settings."""
    cadences = [str(554023000004000000 + j) for j in range(5)]
    rows = [("Leads", str(554023000001000000 + i), c) for i in range(12_000) for c in cadences]
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    if header:
        more = header.count(",")
        inp.write_text(f"module,record_id,cadence_id{header}\n" + "".join(
            ",".join((*row, *[str(i)] * more)) + "\n" for i, row in enumerate(rows)))
    held = held_by(rows[-1][1], tmp_path / "out.csv", 50_000)
    stream = kw.pop("stream", None)
    result = run_job(settings(tmp_path, inp, **kw), live.env, transports=Transports(api=held),
                     stream=stream)
    return rows, live, held, result


@pytest.mark.slow
def test_the_results_are_written_while_the_last_calls_are_still_unanswered(tmp_path, serve):
    """A list sent in about its own order has the results of its first rows written while its
    last call waits for an answer — not all written after it — and the results are the same
    as ever: every row, in order, with its outcome."""
    rows, live, held, result = _held_job(tmp_path, serve, _LastCallHeld)

    assert result.exit_code == 0, result.aborted
    assert held.seen >= 50_000  # a chunk of rows was written before the last answer
    results = read_results(tmp_path / "out.csv")
    assert [(r["module"], r["record_id"], r["cadence_id"]) for r in results] == rows
    assert {r["status"] for r in results} == {"unenrolled"}
    assert [r["row"] for r in results] == [str(i) for i in range(1, len(rows) + 1)]
    assert set(live.sandbox.removed) == set(rows)


class _TempRemovedOnLastCall(_LastCallHeld):
    """As :class:`_LastCallHeld`, then the results' hidden file is removed (a clean-up job, a
    folder swapped): the writing done while the calls went is lost."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "POST" and self._record in request.content:
            for tmp in self._results.parent.glob(f".{self._results.name}.*.tmp"):
                tmp.unlink()
        return response


@pytest.mark.slow
def test_results_lost_while_the_calls_went_are_written_again_from_the_journal(tmp_path, serve):
    """What was written while the calls went can fail (a disk full for a while, a folder
    replaced); the run still ends with every row's results, written from the journal."""
    rows, live, held, result = _held_job(tmp_path, serve, _TempRemovedOnLastCall)

    assert result.exit_code == 0, result.aborted
    assert held.seen >= 50_000
    results = read_results(tmp_path / "out.csv")
    assert [(r["module"], r["record_id"], r["cadence_id"]) for r in results] == rows
    assert {r["status"] for r in results} == {"unenrolled"}
    assert not list(tmp_path.glob(".out.csv.*.tmp"))


class _InputEdited(_LastCallHeld):
    """As :class:`_LastCallHeld`; the input, next to the results, is written again with its
    data rows reversed (a list edited in place while its job runs): at the first call, or once
    the last is answered (most results rows written, their columns read from the file)."""

    at_last = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        last = request.method == "POST" and self._record in request.content
        if request.method == "POST" and not self.at_last and not getattr(self, "done", False):
            self._reverse()
        response = await super().handle_async_request(request)
        if last and self.at_last:
            self._reverse()
        return response

    def _reverse(self) -> None:
        self.done = True
        path = self._results.parent / "in.csv"
        header, *lines = path.read_text().splitlines(keepends=True)
        path.write_text(header + "".join(reversed(lines)))


class _InputEditedAtLast(_InputEdited):
    at_last = True


class _InputReplacedKeepingItsTimes(_InputEditedAtLast):
    """Reversed into another file, given the input's times, renamed over it: same size, same
    mtime (`sed … > t; touch -r in.csv t; mv t in.csv`)."""

    def _reverse(self) -> None:
        self.done = True
        path = self._results.parent / "in.csv"
        was = path.stat()
        header, *lines = path.read_text().splitlines(keepends=True)
        new = path.with_name("in.csv.new")
        new.write_text(header + "".join(reversed(lines)))
        os.utime(new, ns=(was.st_atime_ns, was.st_mtime_ns))
        new.replace(path)


class _InputTouchedAtLast(_InputEditedAtLast):
    """Its time changed, its bytes the same (a copy over itself, a sync that sets times)."""

    def _reverse(self) -> None:
        self.done = True
        os.utime(self._results.parent / "in.csv")


@pytest.mark.slow
@pytest.mark.parametrize("edited", [_InputEdited, _InputEditedAtLast,
                                    _InputReplacedKeepingItsTimes])
def test_an_input_edited_while_its_job_runs_gives_no_row_another_rows_columns(tmp_path, serve,
                                                                            edited):
    """Found by trying: a list shuffled while its job ran gave every row of the results the
    Email of another row, and said nothing. The calls' results stand; the input's own columns
    are left out, and that is said."""
    log = io.StringIO()
    rows, _, held, result = _held_job(tmp_path, serve, edited, header=",Email", stream=log,
                                      quiet=False)

    assert result.exit_code == 0, result.aborted
    assert held.done
    results = read_results(tmp_path / "out.csv")
    assert [(r["module"], r["record_id"], r["cadence_id"]) for r in results] == rows
    assert {r["status"] for r in results} == {"unenrolled"}
    assert "Email" not in results[0]
    said = [line for line in log.getvalue().splitlines() if "left out" in line]
    assert len(said) == 1 and "has changed since the job began" in said[0], said


@pytest.mark.slow
def test_an_input_touched_while_its_job_runs_keeps_its_columns(tmp_path, serve):
    """Only its time changed: its bytes are hashed again, found to be the job's, and carried."""
    log = io.StringIO()
    rows, _, held, result = _held_job(tmp_path, serve, _InputTouchedAtLast, header=",Email",
                                      stream=log, quiet=False)

    assert result.exit_code == 0, result.aborted
    assert held.done
    results = read_results(tmp_path / "out.csv")
    assert [r["Email"] for r in results] == [str(i) for i in range(len(rows))]
    assert "left out" not in log.getvalue()


class _InputEditedTempRemoved(_TempRemovedOnLastCall, _InputEdited):
    """The input edited at the first call, and the results' hidden file removed at the last:
    the results are written twice, each time without the input's columns."""


@pytest.mark.slow
def test_what_the_results_leave_out_is_said_once_after_the_progress(tmp_path, serve):
    """The input's columns left out: said once, after the progress lines — not amid them by
    the results written while the calls went, nor again when they were written once more at
    the end."""
    log = io.StringIO()
    _, _, _, result = _held_job(tmp_path, serve, _InputEditedTempRemoved, header=",Email",
                                stream=log, quiet=False, log_format="json")

    assert result.exit_code == 0, result.aborted
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    said = [i for i, e in enumerate(events) if "left out" in e["message"]]
    assert len(said) == 1, said
    assert said[0] > max(i for i, e in enumerate(events) if e["event"] == "progress")


@pytest.mark.slow
def test_a_log_counts_a_split_batch_once_and_never_shows_more_batches_done_than_planned(
        tmp_path, serve):
    """Found by trying: refusals naming no id (INVALID_DATA without a json_path) split
    batches, and each piece answered counted as a batch done, so a cron log read
    ``batches 215/76 … ETA -12s``. A batch is done once, when all of its pieces are."""
    rows = make_rows(400, 8, max_k=3)
    unknown = {rows[0][1], rows[len(rows) // 2][1]}
    live = serve(World.from_pairs([t for t in rows if t[1] not in unknown]),
                 answer_shape="v8", error_paths=False)
    inp = write_pairs(tmp_path / "in.csv", rows)
    err_path = tmp_path / "run.err"
    with open(err_path, "w") as err:  # a log: stderr is a file, not a terminal
        proc = subprocess.run(
            [sys.executable, "-m", "batcher", "run", str(inp), "--results",
             str(tmp_path / "out.csv"), "--no-preflight"],
            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, **live.env},
            stdout=subprocess.DEVNULL, stderr=err, timeout=120)
    log = err_path.read_text()

    assert proc.returncode == 1, log  # the unknown records' pairs failed
    lines = re.findall(r"^([\d,]+)/([\d,]+) pairs  batches ([\d,]+)/([\d,]+) .* ETA (\S+)$",
                       log, re.M)
    assert lines, log
    for _, _, done, planned, eta in lines:
        assert int(done.replace(",", "")) <= int(planned.replace(",", "")), log
        assert not eta.startswith("-"), log
    assert lines[-1][0] == lines[-1][1] and lines[-1][2] == lines[-1][3], log
    assert_exact(live.sandbox, rows)
    failed = {(r["record_id"], r["code"]) for r in read_results(tmp_path / "out.csv")
              if r["status"] != "unenrolled"}
    assert failed == {(r, "INVALID_DATA") for r in unknown}
