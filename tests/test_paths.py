"""The journal and results paths of `run`, `report` and `status`, as an operator meets them on a
bad day:

- a ``--journal`` that is no journal (a text file, another program's SQLite file, a folder, an
  empty file) is refused and left exactly as found: no lock file, no ``-wal``/``-shm``, its mode
  and bytes untouched (and an SQLite file not switched to WAL mode);
- a ``--journal`` named like data batcher reads or writes (``x.csv``, ``x.json`` …) is a slip for
  ``--results``: refused before anything, unless such a journal is already there;
- results (and the retry file, summary and report beside them) that are symbolic links are
  written through: the file linked to is updated, the link kept; a link another user planted is
  not followed;
- a journal in a read-only place (an archive copy) is reported and its status read;
- a host running one journal twice at once is told the other run is its own.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from batcher.cli import main
from batcher.errors import UsageError
from batcher.job import run_job
from batcher.journal import Journal
from batcher.sandbox.world import World
from batcher.stopping import Stopper

from .conftest import read_results, write_pairs
from .test_e2e import make_rows
from .test_files import cli, job, nothing_reached, untouched, use_env


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------- a path that is no journal


def _no_journal(tmp_path: Path, found: str) -> Path:
    path = tmp_path / {"text": "notes.txt", "sqlite": "app.db", "folder": "old",
                       "empty": "out.journal"}[found]
    if found == "text":
        path.write_text("the team's notes, not batcher's\n")
    elif found == "sqlite":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE customers (id TEXT)")
        db.close()
    elif found == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"")
    if path.is_file():
        path.chmod(0o644)
    return path


@pytest.mark.parametrize("command", ["run", "report"])
@pytest.mark.parametrize(("found", "code"), [("text", 2), ("sqlite", 2), ("folder", 2),
                                             ("empty", 3)])
def test_a_journal_path_that_is_no_journal_is_refused_and_left_as_found(
        tmp_path, serve, monkeypatch, capsys, command, found, code):
    """Found by trying: a refused ``--journal notes.txt`` left ``notes.txt.lock`` behind and the
    file made 0600; another program's SQLite file was also switched to WAL mode for good, with
    ``-wal``/``-shm`` files beside it."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    path = _no_journal(tmp_path, found)
    before, files = (untouched(path) if path.is_file() else None), listing(tmp_path)
    use_env(monkeypatch, live.env)
    argv = (["run", str(inp), "--results", str(tmp_path / "out.csv")] if command == "run" else
            ["report", "--results", str(tmp_path / "again.csv")])

    got = main([*argv, "--journal", str(path)])

    err = capsys.readouterr().err
    assert got == code, err
    assert len(err.strip().splitlines()) == 1 and str(path) in err and "Traceback" not in err
    assert listing(tmp_path) == files  # no lock file, no -wal/-shm, no results
    if before is not None:
        assert untouched(path) == before
    if found == "sqlite":
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        db.close()
    nothing_reached(live)


# ---------------------------------------------------------------------- a journal named as data


@pytest.mark.parametrize("name", ["job.csv", "JOB.CSV", "job.xlsx", "job.parquet", "job.json",
                                  "job.html", "job.csv.gz", "job.txt"])
def test_a_new_journal_named_as_data_is_refused_as_a_slip_for_results(
        tmp_path, serve, monkeypatch, capsys, name):
    """`--journal out.csv` (a slip for --results, or the flags swapped) silently made an SQLite
    file named out.csv: the next person to open it in a spreadsheet finds garbage."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    use_env(monkeypatch, live.env)

    got = main(["run", str(inp), "--results", str(tmp_path / "out.csv"),
                "--journal", str(tmp_path / name)])

    err = capsys.readouterr().err
    assert got == 2, err
    assert len(err.strip().splitlines()) == 1 and "Did you mean --results?" in err
    assert str(tmp_path / "out.journal") in err  # the name it would have without --journal
    assert listing(tmp_path) == ["in.csv"]
    nothing_reached(live)


@pytest.mark.parametrize("name", ["job.db", "job.sqlite", "nightly-offboarding", "old.csv"])
def test_a_journal_named_as_a_journal_or_already_there_is_taken(tmp_path, serve, monkeypatch,
                                                                 name):
    """Only a new journal named as data is refused: other names are the user's choice, and a
    journal already there under a data name (made by an older batcher) still resumes."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    journal = tmp_path / name
    if name == "old.csv":
        Journal.open(journal, "an older batcher's run, stopped before its plan").close()
    use_env(monkeypatch, live.env)

    assert main(["run", str(inp), "--results", str(tmp_path / "out.csv"), "--quiet",
                 "--journal", str(journal)]) == 0
    assert set(live.sandbox.removed) == set(rows)
    assert main(["status", "--journal", str(journal)]) == 0


# ---------------------------------------------------------------------- results through links


def test_results_and_the_files_beside_them_are_written_through_their_links(tmp_path, serve):
    """`latest.csv -> /data/2026-12-01.csv` was replaced by a regular file: the dated file kept
    yesterday's content and the link that publishes it was gone. Each file a job writes is
    written through its link (relative, absolute, or naming a file not made yet)."""
    rows = make_rows(30, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    data, pub = tmp_path / "data", tmp_path / "pub"
    data.mkdir()
    pub.mkdir()
    (data / "2026-12-01.csv").write_text("yesterday's list\n")
    links = {"latest.csv": "../data/2026-12-01.csv",
             "latest.retry.csv": str(data / "retry.csv"),
             "latest.summary.json": "../data/summary.json",  # not there yet
             "latest.report.html": "../data/report.html"}
    for name, target in links.items():
        (pub / name).symlink_to(target)

    for argv in (["run", str(inp), "--results", str(pub / "latest.csv"), "--quiet"],
                 ["report", "--journal", str(pub / "latest.journal"),
                  "--results", str(pub / "latest.csv")]):
        proc = cli(*argv, env=live.env)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

        for name, target in links.items():
            assert (pub / name).is_symlink() and os.readlink(pub / name) == target, name
            assert (pub / name).resolve().parent == data
        got = read_results(data / "2026-12-01.csv")
        assert len(got) == len(rows) and {r["status"] for r in got} == {"unenrolled"}
        summary = json.loads((data / "summary.json").read_text())
        assert summary["results"] == str(pub / "latest.csv") and summary["reconciled"]
        assert "<html" in (data / "report.html").read_text().lower()
        assert (data / "retry.csv").read_text().startswith("module,record_id,cadence_id")
        assert not [p for d in (data, pub) for p in d.iterdir() if p.name.startswith(".")]
    assert listing(pub) == sorted([*links, "latest.journal", "latest.journal.lock"])


@pytest.mark.parametrize("case", ["planted", "folder missing", "summary a folder"])
def test_a_results_link_that_cannot_be_written_through_is_refused_before_any_call(
        tmp_path, serve, monkeypatch, capsys, case):
    """A link another user planted in a shared folder (``/tmp``) is not followed (as the kernel's
    protected_symlinks): the file it names is not ours to replace. A link into a folder that is
    not there is said as that folder, before any call; so is a file beside the results that is a
    folder (it failed only once every call was made: exit 3, the results unwritten)."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim.csv"
    victim.write_text("precious\n")
    results = shared / "out.csv"
    if case == "planted":
        if os.geteuid() != 0:
            pytest.skip("making a link owned by another user needs root")
        shared.chmod(0o1777)
        results.symlink_to(victim)
        os.lchown(results, 65534, 65534)
    elif case == "folder missing":
        results.symlink_to(tmp_path / "nowhere" / "out.csv")
    else:
        (shared / "out.summary.json").mkdir()
    before = untouched(victim)
    use_env(monkeypatch, live.env)

    got = main(["run", str(inp), "--results", str(results),
                "--journal", str(tmp_path / "job.journal")])

    err = capsys.readouterr().err
    assert got == 2, err
    assert len(err.strip().splitlines()) == 1
    if case == "planted":
        assert "owned by another user" in err
    elif case == "folder missing":
        assert f"folder {tmp_path / 'nowhere'} (where out.csv links to) does not exist" in err
    else:
        assert f"the summary {shared / 'out.summary.json'} is a folder" in err
    assert untouched(victim) == before
    assert listing(shared) == (["out.summary.json"] if case == "summary a folder" else
                               ["out.csv"])
    assert not (tmp_path / "job.journal").exists()
    nothing_reached(live)


# ---------------------------------------------------------------------- a read-only journal


@pytest.fixture
def archive(tmp_path):
    """A folder to fill, then made read-only (a tmpfs remounted ``ro``): an archive copy, a
    read-only share. Skips where mounting is not allowed."""
    folder = tmp_path / "archive"
    folder.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs",
                          str(folder)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip() or got.returncode}")

    def seal() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    try:
        yield folder, seal
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("lock", [True, False])
@pytest.mark.parametrize(("max_calls", "code", "state"), [(None, 0, "finished"),
                                                          (1, 3, "stopped")])
def test_a_journal_in_a_read_only_place_is_reported_and_its_status_read(
        tmp_path, serve, archive, lock, max_calls, code, state):
    """`batcher report` and `batcher status` of an archived journal (read-only, with or without
    its lock file) exited 2: "cannot lock journal … Read-only file system", "unable to open
    database file". Both read it now; report exits by the job's own rules. A run, which must
    write, is refused saying so."""
    rows = make_rows(40, 3)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    assert run_job(job(tmp_path, inp, max_calls=max_calls), live.env).exit_code == code
    folder, seal = archive
    for name in ("out.journal", "out.journal.lock")[:2 if lock else 1]:
        shutil.copy2(tmp_path / name, folder / name)
    seal()

    report = cli("report", "--journal", str(folder / "out.journal"),
                 "--results", str(tmp_path / "again.csv"), env={})
    out, err = report.communicate(timeout=120)
    status = cli("status", "--journal", str(folder / "out.journal"), "--json", env={})
    status_out, status_err = status.communicate(timeout=60)

    assert report.returncode == code, err
    assert "could not" not in err and "Traceback" not in err  # the page too
    key = ("row", "record_id", "cadence_id", "status", "code", "attempts", "finished_at")
    assert [[r[k] for k in key] for r in read_results(tmp_path / "again.csv")] == \
        [[r[k] for k in key] for r in read_results(tmp_path / "out.csv")]
    assert "calls per second" in (tmp_path / "again.report.html").read_text().lower()
    assert status.returncode == 0, status_err
    got = json.loads(status_out)
    assert got["state"] == state and got["rows"] == len(rows)
    # a run of it cannot write there: refused before any call, saying what reads it there
    calls = len(live.sandbox.calls)
    run = cli("run", str(inp), "--results", str(tmp_path / "resumed.csv"),
              "--journal", str(folder / "out.journal"), env=live.env)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 2, err
    assert "`batcher report` and `batcher status` read it where it is" in err
    assert len(live.sandbox.calls) == calls


def test_a_read_only_journal_whose_last_answers_are_in_its_wal_says_how_to_read_it(
        tmp_path, serve, archive):
    """Copied without its ``-shm`` while its ``-wal`` held answers (a run killed, then archived),
    the journal cannot be read in place: read as it is without them, it would tell an older
    story. Said in one line, with what to do."""
    rows = make_rows(20, 2)
    live = serve(World.from_pairs(rows))
    inp = write_pairs(tmp_path / "in.csv", rows)
    assert run_job(job(tmp_path, inp), live.env).exit_code == 0
    folder, seal = archive
    journal = tmp_path / "out.journal"
    with Journal.open(journal, None):  # writes to its -wal, and keeps it until closed
        assert Path(f"{journal}-wal").stat().st_size > 0
        for end in ("", "-wal"):
            shutil.copy2(f"{journal}{end}", f"{folder / journal.name}{end}")
    seal()

    for argv in (["status"], ["report", "--results", str(tmp_path / "again.csv")]):
        proc = cli(*argv, "--journal", str(folder / "out.journal"), env={})
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert len(err.strip().splitlines()) == 1 and "copy the journal with its -wal" in err


# ---------------------------------------------------------------------- two runs in one process


def test_a_host_running_one_journal_twice_at_once_is_told_the_other_run_is_its_own(
        tmp_path, serve):
    """A scheduler that calls run_job for the same job from two threads was told the journal was
    in use by "another batcher run (pid <its own pid>)": a pid it would look for and not find."""
    rows = make_rows(400, 40, seed=2, max_k=2)
    live = serve(World.from_pairs(rows), latency=0.1)
    inp = write_pairs(tmp_path / "in.csv", rows)
    stopper, done = Stopper(), []
    first = threading.Thread(target=lambda: done.append(
        run_job(job(tmp_path, inp, concurrency=1), live.env, stopper=stopper)))
    first.start()
    try:
        deadline = time.monotonic() + 60
        while not live.sandbox.calls and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(UsageError) as refused:
            run_job(job(tmp_path, inp, concurrency=1), live.env)
    finally:
        stopper.request("the test is over")
        first.join(timeout=60)
    text = str(refused.value)
    assert f"another run of this same process (pid {os.getpid()})" in text
    assert "another batcher run" not in text
    assert done and done[0].exit_code == 3  # the first run, stopped: resumable
