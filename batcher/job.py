"""The job as a library: what `batcher run`, `report` and `cadences` do, callable from a scheduler.

Order of a run: read and validate → (new journal) preflight, plan, load the journal → (resumed
journal) re-plan the pairs that failed retryably → send what is pending → write results from the
journal. The job owns its lifecycle: a signal or a host's request stops it at any moment
(:mod:`batcher.stopping`), a failure anywhere in the engine stops it with a reason and an exit
code, and the results are written whatever happened once the journal exists — an aborted job
still says what happened to every row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
import numpy as np

from .config import Credentials, Endpoints, load_credentials, resolve_endpoints
from .errors import (
    AbortError,
    BatcherError,
    Halted,
    InputError,
    JournalError,
    MachineLimit,
    PermissionDenied,
    TransientError,
    UsageError,
    machine_limit,
)
from .executor import Counters, Executor, ExecutorSettings
from .hostsettings import lean_heap, unraisable_ignored
from .htmlreport import Tally, report_path, write_report
from .htmlreport import prepare as prepare_report
from .inputs import (
    CHANGED_WHILE_READ,
    INVALID,
    InputOptions,
    InputScan,
    RecordList,
    canonical_module,
    check_input,
    file_stamp,
    module_named_line,
    rounding_line,
    scan_input,
    sheet_lines,
    stamped_fingerprint,
    swapped_columns_line,
    unusual_line,
)
from .inputs.carry import Carried, carried_columns
from .inputs.source import Source
from .journal import OPEN_STATES, Journal, meta_of, utc_now
from .logs import JobLog
from .models import pasted, utc_at, where_journals_are, with_date
from .netio import accounts_transport, api_transport, check_proxies, env_tls_context
from .planner import Plan
from .planreport import plan_scan
from .progress import Phases, Progress
from .redact import Redactor
from .report import (
    RESULT_SUFFIXES,
    Summary,
    UnplannedResults,
    check_results_capacity,
    cut_cells_line,
    defused_cells_line,
    left_out_line,
    side_paths,
    temp_path,
    with_report,
    write_results,
    written_through,
)
from .retry import Reachability, RetryPolicy
from .stopping import Stopper, signals_to
from .streams import printable
from .zoho.auth import ZohoAuth
from .zoho.cadences import MANUAL, Cadence, fetch_cadences, preflight
from .zoho.tokencache import default_cache

if TYPE_CHECKING:
    import pyarrow as pa

    from .inputs.source import Stamp

_PREFLIGHT_LINES = 10  # cadence problems printed one per line; the rest as a count


@dataclass(frozen=True)
class RunSettings:
    input: str | Path
    results: str | Path
    journal: str | Path | None = None
    module: str | None = None
    concurrency: int = 4
    max_calls: int | None = None
    dry_run: bool = False
    preflight: bool = True
    quiet: bool = False
    api_domain: str | None = None
    accounts_url: str | None = None
    dc: str | None = None
    timeout: float = 30.0
    #: retries, the longest Retry-After honoured (``longest_wait``), how long an outage may last
    #: before the job stops (``outage_after``)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    calm_seconds: float = 5.0
    #: how many times per job the pairs that failed retryably are sent again by a re-run
    max_retry_rounds: int = 3
    #: how to read the input (``InputOptions``: ``--delimiter``, ``--*-column``, and for a
    #: record list ``--cadence`` ids or ``--all-cadences``); its module is ``module``'s
    reading: InputOptions = field(default_factory=InputOptions)
    #: stderr lines: "text" (``batcher: ...``) or "json" (one object a line: event, ts, fields)
    log_format: str = "text"
    #: reuse access tokens between commands (``--no-token-cache``: False)
    token_cache: bool = True
    #: stop (exit 3, resumable) when more than this % of answered pairs failed for good
    halt_on_failures: float | None = None

    def input_options(self) -> InputOptions:
        return replace(self.reading, module=self.module)

    @property
    def all_cadences(self) -> bool:
        return self.reading.all_cadences

    def journal_path(self) -> Path:
        if self.journal:
            return Path(self.journal)
        results = Path(self.results)
        return results.with_name(results.stem + ".journal")


@dataclass(frozen=True)
class JobResult:
    """What :func:`run_job` returns: the job's ``summary`` (counts, paths of the results, retry
    file, summary and report: :class:`~batcher.report.Summary`), the ``exit_code`` the command
    line would exit with (0, 1, 3; see the README), and why the run stopped early
    (``aborted``, None when it did not) — the line the command line ends with."""

    summary: Summary
    exit_code: int
    aborted: str | None = None


@dataclass(frozen=True)
class Transports:
    """Injected HTTP transports (tests, the in-process sandbox); None means the real network."""

    api: httpx.AsyncBaseTransport | None = None
    accounts: httpx.AsyncBaseTransport | None = None


@dataclass(frozen=True)
class _Stop:
    """Why a run ended early, and the exit code that says so."""

    reason: str
    exit_code: int = 3


def _check(settings: RunSettings) -> None:
    """Everything about the flags that can be refused before the input is read."""
    if settings.concurrency < 1 or settings.concurrency > 25:
        raise UsageError("--concurrency must be between 1 and 25 (Zoho's largest per-app limit)")
    if settings.max_calls is not None and settings.max_calls < 1:
        raise UsageError("--max-calls must be at least 1 (it is the number of un-enrol calls "
                         "this run may send)")
    if settings.max_retry_rounds < 0:
        raise UsageError("max_retry_rounds must not be negative")
    pct = settings.halt_on_failures
    if pct is not None and not 0 <= pct <= 100:
        raise UsageError(f"--halt-on-failures {pct:g}: give a percentage from 0 to 100 (the "
                         "share of answered pairs failed for good above which the job stops)")
    if settings.all_cadences and settings.input_options().cadences:
        raise UsageError("--cadence and --all-cadences: give one or the other (a record list "
                         "leaves the cadences named, or every manual cadence of its module)")
    results = Path(settings.results)
    _check_results(results)
    journal = settings.journal_path()
    written: dict[Path, str] = {}
    for beside in (results, _dry_run_beside(results)):
        written |= _written_beside(beside)
    journals = {journal: "journal", journal.with_name(journal.name + ".lock"): "journal's lock"}
    for path, what in journals.items():  # the results written over the journal would end the job
        _not_the_input(path, written, f"--journal {journal}", what)
    if settings.journal and not os.path.lexists(journal) \
            and journal.suffix.lower() in _DATA_SUFFIXES:
        # a new journal takes any name SQLite is given: this one is a slip for --results
        raise UsageError(
            f"--journal {journal}: {journal.suffix} names data (an input, results, a summary "
            "or a report), not a journal; batcher would make a new SQLite journal under that "
            "name. Did you mean --results? Give the journal a .journal name (without --journal "
            f"it is {replace(settings, journal=None).journal_path()}, beside the results)")
    _not_the_input(Path(settings.input), written, f"--results {results}")
    # the journal and its lock are named by --journal when it is given, else by the results
    _not_the_input(Path(settings.input), journals,
                   f"--journal {journal}" if settings.journal else f"--results {results}",
                   give="the journal" if settings.journal else "the results")
    _names_fit(results.parent, [temp_path(_landing(p)) for p in written] + [
        journal.with_name(journal.name + end) for end in ("", "-wal", "-shm", ".lock")])
    real = _real_results(results)
    if not settings.dry_run and not journal.exists() and real:
        # a new job would replace the record of what another one did (un-enrolled rows would
        # come back as 'not enrolled'), or the summary, retry file and report beside it
        raise UsageError(_other_jobs_files(results, journal, real))


#: extensions of the files batcher reads or writes as data (inputs, results, summary, report)
_DATA_SUFFIXES = frozenset({*RESULT_SUFFIXES, ".xlsm", ".xls", ".xlsb", ".ods", ".tsv", ".txt",
                            ".gz", ".json", ".html", ".htm"})


def _landing(path: Path) -> Path:
    """Where a file written to ``path`` lands (through the user's links); ``path`` itself when
    its links cannot be followed (said by :func:`_check_results` for the files it checks)."""
    try:
        return written_through(path)
    except OSError:
        return path


def _names_fit(folder: Path, paths: Iterable[Path]) -> None:
    """UsageError when a file the job would write has a name longer than its folder takes: a
    results name that fits while the hidden file it is written to first does not would let the
    calls go and the results never be written."""
    for path in paths:
        try:
            longest = os.pathconf(path.parent if path.parent.is_dir() else folder, "PC_NAME_MAX")
        except (OSError, ValueError):
            longest = 255
        if len(os.fsencode(path.name)) > longest:
            raise UsageError(f"a file batcher writes beside the results or journal would be "
                             f"named {path.name!r}, longer than the {longest} bytes a name may "
                             "have there; give a shorter --results (or --journal)")


def _other_jobs_files(results: Path, journal: Path, real: Path) -> str:
    """Why a new job (``journal`` holds none) may not write ``results``: ``real``, the results
    of a real job, are there or share their stem (and so summary, retry file and report) with
    them; whose journal that job has, when its summary says; and what to do."""
    retry, summary = side_paths(results)
    theirs = _summary_journal(summary)
    if real == results:
        what = f"{results} holds the results of a real job"
    else:
        what = (f"{real} holds the results of another, real job, and its summary, retry file and "
                f"report ({summary.name}, {retry.name}, {report_path(results).name}) are named "
                f"by the stem {results.stem!r} that --results {results.name} shares: this job "
                "would write over them")
    if theirs is None or theirs.resolve() == journal.resolve():
        whose = (f"its journal {journal} is gone" if theirs else
                 f"this job's journal {journal} does not exist")
        if real == results:
            whose += ", so a new job would send every call again and replace them"
        keep = ""
    else:
        whose = (f"its journal is {theirs}" + (" (gone)" if not theirs.exists() else "")
                 + f", not this job's {journal}")
        keep = f", or give --journal {theirs} to continue that job" if theirs.exists() else ""
    names = (results.with_name(f"{results.stem}-{n}{results.suffix}") for n in range(2, 1000))
    free = next((p for p in names if not any(f.exists() for f in (p, *side_paths(p)))), real)
    return (f"--results {results}: {what}; {whose}. Give --results a name of its own (such as "
            f"{free.name}), or move that job's files away{keep}")


def _summary_journal(summary: Path) -> Path | None:
    """The journal a job's summary names (a run's ``extra.journal``; ``batcher report``'s
    ``extra.rewritten_from_journal``); None when it names none (an older summary)."""
    try:
        extra = json.loads(summary.read_text(encoding="utf-8")).get("extra") or {}
        named = extra.get("journal") or extra.get("rewritten_from_journal")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(named) if isinstance(named, str) and named else None


def _real_results(results: Path) -> Path | None:
    """The results of a real job that writing ``results`` would replace, or whose summary,
    retry file and report it would (every extension of a stem shares them); else None. Real:
    its summary says so (a run's ``extra.dry_run``; ``batcher report`` writes only a real
    job's, from its journal), and the results it names are there."""
    summary = side_paths(results)[1]
    try:
        doc = json.loads(summary.read_text(encoding="utf-8"))
        extra = doc.get("extra") or {}
        real = extra.get("dry_run") is False or "rewritten_from_journal" in extra
        named = Path(doc.get("results") or results)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return next((p for p in (results, named) if real and p.exists()), None)


def _dry_run_beside(results: Path) -> Path:
    """Where a dry run writes when ``results`` belong to a real job: ``<stem>.dry-run<ext>``."""
    return results.with_name(f"{results.stem}.dry-run{results.suffix}")


def _written_beside(results: Path) -> dict[Path, str]:
    """The files a job writes for these results: path → what it is."""
    retry, summary = side_paths(results)
    return {results: "results", retry: "retry file", summary: "summary",
            report_path(results): "report"}


def _not_the_input(source: Path, written: Mapping[Path, str], flag: str,
                   role: str = "input file", give: str | None = None) -> None:
    """UsageError when a file the command would write is ``source``, its input (re-running a
    retry file beside its own results would replace it, and its job could not be resumed) or
    another file it keeps (``role``: its journal). ``give``: what to rename (the flag's file)."""
    resolved = source.resolve()
    give = give or ("the results" if role == "input file" else "it")
    for path, what in written.items():
        if path.resolve() == resolved:
            raise UsageError(f"{flag}: the {what} would be written to {path}, which is the "
                             f"{role}; give {give} another name")


def _check_results(results: Path) -> None:
    """A results path is a file with a known extension in a folder batcher can write to; a
    symbolic link among the files written (results, retry file, summary, report) is written
    through, to a file in such a folder."""
    if results.is_dir():
        raise UsageError(f"--results {results} is a folder; give a file in it, such as "
                         f"{results / 'results.csv'}")
    if results.suffix.lower() not in RESULT_SUFFIXES:
        raise UsageError(f"--results {results}: unknown extension "
                         f"{results.suffix or '(none)'}; use one of "
                         f"{', '.join(RESULT_SUFFIXES)}")
    folders: dict[Path, str] = {}
    for path, what in _written_beside(results).items():
        try:
            real = written_through(path)
        except OSError as exc:
            raise UsageError(f"--results: the {what} {path} is a symbolic link that cannot be "
                             f"followed ({exc.strerror})") from None
        if real.is_symlink():
            raise UsageError(f"--results: the {what} {path} is a symbolic link owned by another "
                             "user; batcher writes through your own links only: remove it, or "
                             "give other --results")
        if real.is_dir():  # found only once the calls are made, when it is written
            raise UsageError(f"--results: the {what} {path} is a folder" if real == path else
                             f"--results: the {what} {path} links to a folder, {real}")
        where = "" if real == path else f" (where {path.name} links to)"
        folders.setdefault(real.parent, where)
    for folder, where in folders.items():
        if not folder.is_dir():
            raise UsageError(f"--results: folder {folder}{where} does not exist; create it "
                             f"first (mkdir -p {folder})")
        try:  # the only sure test of writability (permissions, read-only mounts, quotas)
            with tempfile.TemporaryFile(dir=folder, prefix=".batcher-probe-"):
                pass
        except OSError as exc:
            raise UsageError(f"--results: cannot write in folder {folder}{where} "
                             f"({exc.strerror}); nothing was sent") from None


def fingerprint(settings: RunSettings) -> str:
    """What a journal is bound to: the input's bytes and the flags that change the plan.
    InputError (or MachineLimit) when the file cannot be read through."""
    return _stamped_fingerprint(settings)[0]


def _stamped_fingerprint(settings: RunSettings) -> tuple[str, Stamp]:
    """:func:`fingerprint`, and the input's stamp as it was hashed (a scan's ``stamp``)."""
    try:
        digest, stamp = stamped_fingerprint(settings.input)
    except OSError as exc:
        if limit := machine_limit(exc, f"reading {settings.input}"):
            raise limit from None
        raise InputError(f"{settings.input}: cannot be read "
                         f"({exc.strerror or type(exc).__name__})") from None
    h = hashlib.sha256(digest.encode())
    flags = {k: v for k, v in asdict(settings.input_options()).items()
             if v not in (None, (), False)}
    flags["module"] = settings.module  # always there: journals made before the other flags
    h.update(json.dumps(flags, sort_keys=True).encode())
    return h.hexdigest(), stamp


def run_job(settings: RunSettings, env: Mapping[str, str], *,
            transports: Transports = Transports(), stream: TextIO | None = None,
            stopper: Stopper | None = None) -> JobResult:
    """Run (or resume) a job to the end; never raises for what the results can report.

    Raises ``UsageError`` (exit 2) before anything is sent: bad settings, an unusable input, a
    journal of another input or held by another run, a call from inside a running event loop
    (use :func:`run_job_async` there), a ``stopper`` that served another job, an ``env`` whose
    values are not all text. Raises ``AuthError`` (exit 3) when the environment holds
    no usable credentials, before any journal. Raises ``AbortError`` (exit 3) when the results
    cannot be written. All are :class:`~batcher.errors.BatcherError`, with ``exit_code``.

    Stopping: SIGINT, SIGTERM and SIGHUP stop it with exit 3 when it runs in the main thread
    (it takes them for the run, and gives the host's handlers back after; a signal the host
    ignores stays ignored); from any thread, ``stopper.request(why)`` (a
    :class:`~batcher.stopping.Stopper`, one per job) does the same — at once while sending,
    at the end of the current step while reading or planning.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise UsageError("run_job was called from a running event loop; in async code, "
                         "await batcher.job.run_job_async(...) instead")
    _check_kinds(settings, env)
    if stopper is None:
        stopper = Stopper()
    elif not isinstance(stopper, Stopper):
        raise UsageError(f"stopper must be a batcher.stopping.Stopper, not "
                         f"{type(stopper).__name__}")
    if stream is not None and not callable(getattr(stream, "write", None)):
        raise UsageError(f"stream must be a text stream (with write), not "
                         f"{type(stream).__name__}")
    if not isinstance(transports, Transports):
        raise UsageError(f"transports must be batcher.job.Transports, not "
                         f"{type(transports).__name__}")
    stopper.take()  # one job a stopper: UsageError for a second
    with signals_to(stopper):
        log = JobLog(stream or sys.stderr, settings.log_format, settings.quiet)
        try:
            tonight = dated(settings)
            return _run_job(tonight, env, transports, log, stopper,
                            _resume_tonight(settings, tonight))
        finally:
            log.close()


def _resume_tonight(settings: RunSettings, tonight: RunSettings) -> str | None:
    """What a stopped run adds to "re-run the same command" when ``{date}`` names its files
    (``tonight``: the settings with it filled in): after midnight UTC the same command is the
    next night's new job, which would send every call of this one again; None without it."""
    if "{date}" not in f"{settings.results}{settings.journal or ''}":
        return None
    if settings.journal is not None and "{date}" not in str(settings.journal):
        return None  # a fixed journal carries the job over midnight: the same command resumes
    return (f"the same command does so before midnight UTC; after it, {{date}} makes it a new "
            f"job: resume this one with --results {shlex.quote(pasted(tonight.results))}"
            + (f" --journal {shlex.quote(pasted(tonight.journal))}"
               if settings.journal is not None else "")
            + (" (a job spread over nights by --max-calls needs a --journal without {date})"
               if settings.max_calls is not None else ""))


def _check_kinds(settings: RunSettings, env: Mapping[str, str]) -> None:
    """UsageError when a library caller's settings are not of their kinds: a count that is not
    a whole number, seconds that are not a positive number, a path that is not one (the command
    line's flags are parsed into them; a scheduler's code may hand anything)."""
    if not isinstance(settings, RunSettings) or not isinstance(env, Mapping):
        raise UsageError("run_job takes RunSettings and a mapping of environment variables")
    # the variable's name only: its value may be a secret
    wrong = sorted(str(k) for k, v in env.items()
                   if not (isinstance(k, str) and isinstance(v, str)))
    if wrong:
        raise UsageError(f"the environment must map names to text: {', '.join(wrong[:5])} "
                         "is not (its value is not printed here)")
    for name in ("input", "results", "journal"):
        value = getattr(settings, name)
        if value is None and name == "journal":
            continue
        # a path the system cannot take (bytes, a NUL) would fail deep inside, as a ValueError
        text = os.fspath(value) if isinstance(value, str | os.PathLike) else None
        if not isinstance(text, str) or "\0" in text:
            raise UsageError(f"{name} must be a path, not {value!r}")
    for name in ("concurrency", "max_calls", "max_retry_rounds"):
        value = getattr(settings, name)
        if (type(value) is not int) and (value is not None or name != "max_calls"):
            raise UsageError(f"{name} must be a whole number, not {value!r}")
    for name in ("timeout", "calm_seconds", "halt_on_failures"):
        value = getattr(settings, name)
        if value is None and name == "halt_on_failures":
            continue  # its range is checked with the flags'
        if type(value) not in (int, float) or name == "timeout" and not 0 < value < math.inf \
                or value != value or name == "calm_seconds" and value < 0:  # NaN
            raise UsageError(f"{name} must be a number{' above 0' * (name == 'timeout')}"
                             f"{' of 0 or more' * (name == 'calm_seconds')}, not {value!r}")
    for name in ("dry_run", "preflight", "quiet", "token_cache"):
        if type(getattr(settings, name)) is not bool:
            raise UsageError(f"{name} must be True or False, not {getattr(settings, name)!r}")
    for name in ("module", "api_domain", "accounts_url", "dc", "log_format"):
        value = getattr(settings, name)
        if not isinstance(value, str) and (value is not None or name == "log_format"):
            raise UsageError(f"{name} must be text, not {value!r}")
    for name, kind in (("retry", RetryPolicy), ("reading", InputOptions)):
        if not isinstance(getattr(settings, name), kind):
            raise UsageError(f"{name} must be a {kind.__name__}, not "
                             f"{type(getattr(settings, name)).__name__}")


def dated(settings: RunSettings, now: datetime | None = None) -> RunSettings:
    """``{date}`` in the results (and journal) path → today's UTC date, YYYY-MM-DD: a nightly
    job writes a file per night, and its journal follows its results."""
    return replace(settings, results=with_date(settings.results, now, "--results"),
                   journal=None if settings.journal is None
                   else with_date(settings.journal, now, "--journal"))


async def run_job_async(settings: RunSettings, env: Mapping[str, str], *,
                        transports: Transports = Transports(),
                        stream: TextIO | None = None) -> JobResult:
    """:func:`run_job` for async hosts: the job runs in a thread with its own event loop.

    Cancelling the awaiting task stops the job as a signal would (its results are written, its
    journal resumable) and then raises ``CancelledError``.
    """
    stopper = Stopper()
    job = asyncio.get_running_loop().run_in_executor(None, functools.partial(
        run_job, settings, env, transports=transports, stream=stream, stopper=stopper))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        stopper.request("cancelled by the host")
        while not job.done():  # the job ends (results written, lock released) before this does
            with contextlib.suppress(BaseException):  # a second cancel changes nothing
                await asyncio.shield(job)
        raise


def _run_job(settings: RunSettings, env: Mapping[str, str], transports: Transports,
             log: JobLog, stopper: Stopper, resume_note: str | None = None) -> JobResult:
    _check(settings)
    options = settings.input_options()
    source = check_input(settings.input, options)  # an unusable file stops before any journal
    started = time.monotonic()
    threading.Thread(target=_ready_ahead, args=(env,), name="batcher-ready", daemon=True).start()
    needs_api = not settings.dry_run or settings.preflight or settings.all_cadences
    creds = load_credentials(env) if needs_api else Credentials(access_token="-")
    endpoints = resolve_endpoints(settings.api_domain, settings.accounts_url, settings.dc, env)
    redact = Redactor(creds.secrets())
    if needs_api and not (transports.api and transports.accounts):
        try:
            check_proxies((endpoints.api_domain, endpoints.accounts_url), env)
        except ValueError as exc:
            raise UsageError(redact(str(exc))) from None
    results = _results_path(settings, log)
    # the input's bytes are hashed on the spare core while a new job reads them (a resume
    # waits for the hash: its journal is checked against it before anything)
    hashing = ThreadPoolExecutor(1, "batcher-fingerprint")
    hashed = hashing.submit(_stamped_fingerprint, settings)
    hashing.shutdown(wait=False)
    read = _Read()
    # the input's stamp (size, times, inode) when its bytes were found to be the journal's
    ahead = _ResultsAhead(settings, results, started, stamp=lambda: hashed.result()[1],
                          source=source)

    def bound() -> str:  # the fingerprint of the very bytes the scan read, or InputError
        fp, stamp = hashed.result()
        if read.scan is not None and read.scan.stamp != stamp:  # written to between the two
            raise InputError(f"{settings.input}: {CHANGED_WHILE_READ}")
        return fp

    with ahead.let_go(), _journal_for(settings, bound, env) as journal:
        # a person is told when a run continues a job (its journal decides what is sent)
        log.say("start", f"resuming the job of {journal.path}" if not journal.is_new else
                f"starting {'a dry run of ' if settings.dry_run else ''}{settings.input} -> "
                f"{results}", input=str(settings.input), results=str(results),
                journal=str(journal.path), resumed=not journal.is_new, dry_run=settings.dry_run,
                json_only=journal.is_new)
        _run_begins(settings, journal)
        stop: _Stop | None = None
        try:
            with stopper.phase("raise"):
                # a resumed job needs nothing of its input but the fingerprint: no second scan
                # of a file of tens of millions of rows (a list for --all-cadences is scanned
                # once the org's cadences are read)
                if journal.is_new and not settings.all_cadences:
                    with log.phase(f"reading {settings.input}", "scan"):
                        read.scan = scan_input(settings.input, options, source=source)
                    check_results_capacity(results, read.scan.rows)
                elif not journal.is_new:
                    check_results_capacity(results, journal.rows)
            stop = _drive(settings, read, journal, _Link(creds, endpoints, transports, env),
                          log, stopper, redact, ahead)
        except UsageError as exc:
            if journal.is_new:  # nothing planned, nothing sent: no results to write
                raise
            stop = _Stop(redact(str(exc)), exc.exit_code)
        except BatcherError as exc:  # the journal's disk, a journal that contradicts its input
            stop = _Stop(redact(str(exc)), exc.exit_code)
        with stopper.phase("defer"), _said_while_writing(stopper, log):
            summary = _write(settings, journal, read.scan or source, results, stop, started,
                             log, ahead)
    if stop is None and stopper.requested is not None:  # the signal came while writing
        stop = _Stop(stopper.message())
    code = stop.exit_code if stop else summary.exit_code()
    if settings.dry_run and not stop:
        code = 1 if summary.by_status.get(INVALID) else 0
    if stop is not None and code == 3 and resume_note:  # {date}: "the same command" expires
        stop = _Stop(f"{stop.reason} — {resume_note}", code)
    log.say("end", summary.human(), bare=True, exit_code=code, summary=summary.to_dict())
    if stop is not None:
        log.say("abort", f"aborted: {stop.reason}", always=True, exit_code=code)
    return JobResult(summary=summary, exit_code=code, aborted=stop.reason if stop else None)


def _ready_ahead(env: Mapping[str, str]) -> None:
    """What the job loads on first use, readied on the spare core while the input is read
    rather than before the first call or after the last answer: its clients' TLS context (of
    the authorities its environment names), the report's template and grouping engine."""
    with contextlib.suppress(Exception):  # met, and reported, where it is used
        env_tls_context(env)
    prepare_report()


@contextmanager
def _said_while_writing(stopper: Stopper, log: JobLog) -> Iterator[None]:
    """A signal that comes while the results are written is said at once, by a thread: the
    writing goes on (an .xlsx of many rows takes minutes), and nothing else would show why the
    process has not exited. Said at the end at the latest. A signal that came before (while
    reading, planning or sending) is said once the writing has taken _SLOW_WRITE_S: a quick
    writing needs no line, a long one would otherwise look like a signal ignored."""
    before = stopper.requested is not None
    done, lock, said = threading.Event(), threading.Lock(), []

    def say() -> None:
        with lock:
            if stopper.requested is not None and not said:
                said.append(True)
                what = ("; the results are being written: they are finished first" if before
                        else " while the results are written: they are finished first")
                log.say("signal", f"{stopper.requested}{what} (a second signal stops at once; "
                        "the journal keeps every answer)", always=True)

    def watch() -> None:
        if before:
            if not done.wait(_SLOW_WRITE_S):
                say()
            return
        while not done.wait(_WATCH_S):
            say()

    watcher = threading.Thread(target=watch, name="batcher-signal-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        if not before:
            say()


_WATCH_S = 0.1  # how soon a signal during the writing is said
_SLOW_WRITE_S = 1.0  # how long a writing after a signal goes unsaid


def _results_path(settings: RunSettings, log: JobLog) -> Path:
    """Where the results go: a dry run never replaces the results of a real job — those it
    finds, nor those of a real job whose journal is there (running, or stopped before its
    results were written)."""
    results = Path(settings.results)
    if not settings.dry_run:
        return results
    journal = settings.journal_path()
    real = _real_results(results)
    if not (real or journal.exists()):
        return results
    beside = _dry_run_beside(results)
    whose = f"is where the real job of {journal} writes its results" if real is None else \
        "holds the results of a real job" if real == results else \
        f"shares its summary, retry file and report with the real job's results {real}"
    log.say("dry_run", f"{results} {whose}; this dry run writes {beside}", always=True,
            results=str(beside))
    return beside


def _write(settings: RunSettings, journal: Journal, scan: InputScan | Source | None,
           results: Path, stop: _Stop | None, started: float, log: JobLog,
           ahead: _ResultsAhead) -> Summary:
    """Results, retry file and summary from the journal (or from the scan when the journal was
    never loaded: ``scan`` is the input's scan, or the input as opened when the scan did not
    end), finished by ``ahead`` when it began them while the calls went; a failure to write
    them says how to get them later."""
    source = journal
    reason = stop.reason if stop else None
    try:
        if journal.rows == 0:  # stopped before the plan was loaded (or even the scan ended)
            if not isinstance(scan, InputScan):  # a sheet read once is not read again
                scan = scan_input(settings.input, settings.input_options(),
                                  records=_record_list(settings, journal), source=scan)
            source = UnplannedResults(scan.rows, scan.tables, utc_now(), f"not sent: {reason}",
                                      journal.counters)
        scan = scan if isinstance(scan, InputScan) else None
        with contextlib.suppress(BatcherError):  # why the last run stopped (None: it did not)
            journal.set_meta("aborted", reason)
        meta = {k: journal.get_meta(k, d) for k, d in (
            ("send_s", 0.0), ("token_refreshes", 0), ("lowest_concurrency", None),
            ("warnings", []))}
        blank = scan.blank if scan is not None else journal.get_meta("blank", 0)
        extra = {"dry_run": settings.dry_run, "aborted": reason,
                 "journal": str(settings.journal_path().resolve()), **meta}
        with log.phase(f"writing the results to {results}", "results"):
            # the run's time includes writing its results: a 10M-row job's take seconds
            try:  # written while the calls went; else (or when that failed: a disk full
                # for a while, a folder replaced) from the journal now
                tally, summary = ahead.end(extra)
            except (OSError, BatcherError, ValueError, _NotAhead):
                tally = Tally(source)  # counts for the report, as the results are written
                summary = write_results(
                    tally, results, duration_s=lambda: time.monotonic() - started,
                    extra=extra, blank=blank, **_earlier(journal),
                    carried=_carried(settings, journal, ahead.notes, ahead.stamp,
                                     ahead.source),
                    cadence_names=journal.get_meta("cadence_names", {}))
        with contextlib.suppress(BatcherError):  # `batcher report`: the job's time, all runs
            journal.set_meta("run_s", summary.duration_s)  # the job's: its earlier runs' too
            journal.set_meta("run_ended", summary.finished_at)
    except (OSError, BatcherError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        report = shlex.join(["batcher", "report", "--journal", pasted(journal.path),
                             "--results", pasted(results)])  # pasted as it is, from anywhere
        how = (f"re-run the same command, or `{report}`") if not settings.dry_run \
            else "re-run the dry run"
        if reason and reason != why:  # not twice the same line
            log.say("abort", f"aborted: {reason}", always=True)
        raise AbortError(f"the results could not be written to {results} ({why}); the journal "
                         f"keeps every answer: once that is fixed, {how}") from None
    # once, after the progress (the results may have been begun while the calls went, and
    # written again from the journal)
    for note in dict.fromkeys([*ahead.notes, left_out_line(summary)]):
        if note:
            log.say("results", note, always=True)
    cut = cut_cells_line(summary, None if settings.dry_run else journal.path)
    if cut:  # a cut text is said, never silent
        log.say("results", cut, always=True, cells_cut=summary.extra["xlsx_cells_cut"])
    defused = defused_cells_line(summary)
    if defused:  # a cell that differs from its input's by a ' is said too
        log.say("results", defused, cells_defused=summary.extra["formula_cells_defused"])
    try:
        page = write_report(tally, summary, report_path(results),
                            command=next_command(settings, results, summary, stop is not None),
                            exit_code=stop.exit_code if stop else None)
        summary = with_report(summary, page)
    except (OSError, BatcherError) as exc:  # the results are there: the page is a nicety
        if stop is None:  # else the abort line says what is wrong (a damaged journal, a disk)
            log.say("report", f"the report could not be written ({exc})", always=True)
    return summary


def _run_begins(settings: RunSettings, journal: Journal) -> None:
    """Record, as a real run begins, what `batcher report` needs of it should it never end (a
    kill -9, a machine stopped): its flags (the command that resumes it keeps its --max-calls
    budget, its API domain...) and its start, which a run's end (``run_ended``) follows. Best
    effort: a journal's failing disk is met, and said, where the run writes next."""
    if settings.dry_run:
        return
    with contextlib.suppress(BatcherError):
        run_s, _, never_ended = _run_times(journal)
        if never_ended:  # the killed run's known time stays in the job's, a lower bound
            journal.set_meta("run_s", run_s)
            journal.set_meta("run_s_lower_bound", True)
        journal.set_meta("run_flags", {k: getattr(settings, k) for k in _RUN_FLAGS})
        journal.set_meta("run_began", utc_now())
        journal.set_meta("aborted", None)  # the last run's reason is not this one's


def _earlier(journal: Journal) -> dict[str, Any]:
    """A run's summary counts the job's time as it counts its calls, over every run: the
    seconds of its earlier runs (a killed one's known part folded in by ``_run_begins``, and
    then a lower bound), for :func:`write_results`."""
    earlier, lower = 0.0, False
    with contextlib.suppress(BatcherError):  # a failing disk is said where the run writes
        earlier = float(journal.get_meta("run_s", 0.0))
        lower = bool(journal.get_meta("run_s_lower_bound"))
    return {"earlier_s": earlier, "duration_lower_bound": lower}


def _run_times(journal: Journal) -> tuple[float, str | None, str | None]:
    """(the job's seconds over its runs, when its last run ended, a note) for `batcher report`.

    A run that began and never recorded its end (killed, its machine stopped, its results never
    written) has no duration of its own: it counts from its start to its last logged call
    (nothing after it is known), its end is None — the time of the report is not when the job
    ended — and the note says so."""
    run_s, began = journal.get_meta("run_s", 0.0), journal.get_meta("run_began")
    ended = journal.get_meta("run_ended")
    if began is None or (ended is not None and ended >= began):  # ISO 8601 UTC: text order
        return run_s, ended, None
    start = datetime.fromisoformat(began).timestamp()
    last = journal.last_call_end()
    seen = max(start, last or start)
    return run_s + (seen - start), None, (
        f"the run that began at {began} never recorded its end (killed, or its machine "
        f"stopped): its time is counted to its last recorded call"
        + (f" at {utc_at(last)}" if last and last > start else " (none was recorded)")
        + ", so the duration is a lower bound")


#: the flags of a run (not of its input) that the command resuming it gives again: a page
#: `batcher report` rewrites names the nightly --max-calls budget, the API domain... as the run's
_RUN_FLAGS = ("max_calls", "concurrency", "halt_on_failures", "preflight", "api_domain",
              "accounts_url", "dc", "token_cache", "log_format")


class _ResultsAhead:
    """A run's results written by a thread of their own while it sends, each chunk of rows
    once they are all settled (:meth:`Journal.iter_result_chunks`), and ended by :meth:`end`
    once it stops: a list sent in about its own order has its results a moment after the last
    answer, not the seconds all its rows take. CSV and Parquet only: Arrow writes them without
    the interpreter's lock, while an .xlsx is written cell by cell in Python and would slow the
    loop that sends."""

    def __init__(self, settings: RunSettings, results: Path, started: float,
                 stamp: Callable[[], Stamp] | None = None, source: Source | None = None
                 ) -> None:
        self._settings, self._results, self._started = settings, results, started
        #: the input's stamp when its bytes were found to be the journal's
        self.stamp = stamp
        #: the input as the run opened it (an .xlsx sheet's rows: not read again)
        self.source = source
        self._until = threading.Event()  # set once the run has stopped sending
        self._extra: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._done: tuple[Tally, Summary] | BaseException | None = None
        #: what the results leave out, for the caller to say once they are written
        self.notes: list[str] = []

    def begin(self, journal: Journal) -> None:
        """Start writing the loaded journal's results (called as the sending starts)."""
        if self._results.suffix.lower() == ".xlsx":
            return
        self._thread = threading.Thread(target=self._write, args=(journal,),
                                        name="batcher-results", daemon=True)
        self._thread.start()

    def _write(self, journal: Journal) -> None:
        try:
            # not before the first calls are on their way: they are what a run waits for
            self._until.wait(_AHEAD_AFTER_S)
            tally = Tally(journal)
            summary = write_results(
                tally, self._results, duration_s=lambda: time.monotonic() - self._started,
                extra=lambda: self._extra, blank=journal.get_meta("blank", 0),
                **_earlier(journal),
                carried=_carried(self._settings, journal, self.notes, self.stamp,
                                 self.source),
                cadence_names=journal.get_meta("cadence_names", {}), until=self._until)
            self._done = (tally, summary)
        except BaseException as exc:  # handed to end(), in the caller's thread
            self._done = exc

    def end(self, extra: dict[str, Any]) -> tuple[Tally, Summary]:
        """The rows left written with the journal as it now stands, and the summary with
        ``extra``; raises what the writing raised, or _NotAhead when it never began."""
        if self._thread is None:
            raise _NotAhead
        self._extra = extra
        self._until.set()
        self._thread.join()
        done, self._done = self._done, None
        if isinstance(done, BaseException):
            raise done
        assert done is not None
        return done

    @contextmanager
    def let_go(self) -> Iterator[None]:
        """Around the journal's block: a run that leaves it without :meth:`end` (an error, a
        second signal) lets the thread go once the journal is closed: it wakes, meets the
        journal closed, and its temporary files are removed."""
        try:
            yield
        finally:
            self._until.set()
            if self._thread is not None:
                self._thread.join()


class _NotAhead(Exception):
    """The results were not begun while the calls went."""


_AHEAD_AFTER_S = 0.5  # the results thread's start, after the sending's


def _carried(settings: RunSettings, journal: Journal, notes: list[str],
             stamp: Callable[[], Stamp] | None = None, source: Source | None = None
             ) -> Carried | None:
    """The input's own columns for the results, read again; without them when the input
    cannot be read any more (the results still say what happened to every row), or is no more
    the journal's. What the results leave out is added to ``notes``, said once they are written.

    ``stamp()``: the input's :func:`file_stamp` when this run found its bytes to be the
    journal's (None: they are hashed now). The file is looked at again before and after it is
    read: when it has changed since (a row's Email would be another row's), the bytes are hashed
    again, and unless they are the journal's, the results are written without its columns.
    ``source``: the input as this run opened it: an .xlsx sheet's rows are taken from it, not
    read again, when it was opened from the journal's bytes (its stamp is ``at``'s)."""
    try:
        if stamp is None:
            bound, at = _stamped_fingerprint(settings)
            if bound != journal.fingerprint:
                raise InputError(f"{settings.input} has changed since the job began")
        else:
            at = stamp()
        carried = carried_columns(settings.input, settings.input_options(),
                                  _record_list(settings, journal),
                                  source if source is not None and source.opened == at else None)
    except BatcherError as exc:
        notes.append(f"the input's own columns are left out of the results: {exc}")
        return None
    if carried is None:
        return None

    def unchanged() -> None:
        """InputError unless the file holds the journal's bytes (as it did at ``at``)."""
        nonlocal at
        try:
            if file_stamp(settings.input) == at:
                return
            bound, at = _stamped_fingerprint(settings)
        except OSError as exc:
            raise InputError(f"{settings.input}: cannot be read ({exc.strerror})") from None
        except BatcherError as exc:  # a machine limit, a change while it was hashed
            raise InputError(str(exc)) from None
        if bound != journal.fingerprint:
            raise InputError(f"{settings.input} has changed since the job began")

    def tables() -> Iterator[pa.Table]:
        unchanged()
        yield from carried.tables()
        unchanged()  # written to while it was read: the rows read may not be the journal's

    return replace(carried, tables=tables)


def next_command(settings: RunSettings, results: Path, summary: Summary, stopped: bool) -> str:
    """The command that finishes the job: the same one while rows are left to send (or for a
    dry run, the real one), else the run of its retry file, else the same one (it re-sends
    what failed for a reason worth retrying, up to the job's retry rounds)."""
    # where Zoho is and how the run talks: a command printed without them would send to the
    # default data centre
    reach = [*[a for flag, value in (("--api-domain", settings.api_domain),
                                      ("--accounts-url", settings.accounts_url),
                                      ("--dc", settings.dc)) if value for a in (flag, value)],
             *["--no-token-cache"] * (not settings.token_cache),
             *["--log-format", settings.log_format] * (settings.log_format != "text")]
    # how the job runs (its budget, pace and checks): the retry file's job runs the same way
    halt = settings.halt_on_failures
    pace = {"--concurrency": settings.concurrency
            if settings.concurrency != RunSettings.concurrency else None,
            "--halt-on-failures": None if halt is None else f"{halt:g}",  # as typed: 20, not 20.0
            "--max-calls": settings.max_calls}
    reach += [a for flag, value in pace.items() if value is not None for a in (flag, str(value))]
    reach += ["--no-preflight"] * (not settings.preflight)
    left = summary.by_status.get("not_sent", 0)
    if summary.retry_rows and not left and not stopped and not settings.dry_run:
        retry = Path(summary.retry_path)
        return shlex.join(["batcher", "run", pasted(retry), "--results",
                           pasted(results.with_name(f"{results.stem}-retry{results.suffix}")),
                           *reach])
    args = ["batcher", "run", pasted(settings.input), "--results", pasted(settings.results),
            *reach]
    flags = {"--journal": settings.journal and pasted(settings.journal),
             "--module": settings.module,
             "--delimiter": settings.reading.delimiter,
             "--record-column": settings.reading.record_column,
             "--cadence-column": settings.reading.cadence_column,
             "--module-column": settings.reading.module_column}
    for flag, value in flags.items():
        if value is not None:
            args += [flag, str(value)]
    for cadence in settings.reading.cadences:
        args += ["--cadence", cadence]
    args += ["--all-cadences"] * settings.all_cadences
    return shlex.join(args)


@contextmanager
def _journal_for(settings: RunSettings, fp: Callable[[], str],
                 env: Mapping[str, str]) -> Iterator[Journal]:
    if settings.dry_run:  # a rehearsal must not leave a journal a real run would resume from
        with tempfile.TemporaryDirectory(prefix="batcher-dry-", dir=_temp_dir(env)) as tmp, \
                Journal.open(Path(tmp) / "dry.journal", fp) as journal:
            yield journal
    else:
        path, input_name = settings.journal_path(), str(Path(settings.input).resolve())
        made_here = not path.exists()
        try:
            journal = Journal.open(path, fp, input_name=input_name)
        except JournalError:
            if changed := _flags_changed(settings, meta_of(path, "input") or {}, input_name):
                raise JournalError(
                    f"journal {path} was made for {input_name!r} with {changed[0]}; this "
                    f"command gives {changed[1]}. A job resumes only with the flags it began "
                    "with: give them again to finish it, or give another --journal to run "
                    "this as a new job") from None
            raise
        with journal:
            try:
                yield journal
            except UsageError:
                # the input proved unusable once read (no data rows, not UTF-8 past its start):
                # exit 2, nothing sent; a journal made for it would read as a job to resume
                if made_here:
                    journal.discard_unplanned()
                raise


def _temp_dir(env: Mapping[str, str]) -> str | None:
    """The temporary folder ``env`` names (TMPDIR, TEMP, TMP: the first that is a folder), for
    a dry run's journal — as large as a real one's; None: the process's (``tempfile``'s)."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        folder = (env.get(name) or "").strip()
        if folder and os.path.isdir(folder):
            return folder
    return None


def _flags_changed(settings: RunSettings, made: Mapping[str, Any], input_name: str
                   ) -> tuple[str, str] | None:
    """(the job's input flags, this command's) where they differ, for the same input file;
    None when they are the same (or the journal says nothing of them)."""
    then = made.get("options")
    if made.get("path") != input_name or not isinstance(then, dict):
        return None
    now = json.loads(json.dumps(asdict(settings.input_options())))  # tuples as JSON lists
    keys = [k for k in now if now[k] != then.get(k, now[k])]

    def said(options: Mapping[str, Any]) -> str:
        parts = []
        for k in keys:
            flag, value = "--" + k.replace("_", "-"), options.get(k)
            if k == "all_cadences":
                parts.append("--all-cadences" if value else "no --all-cadences")
            elif k == "cadences":
                parts.append(" ".join(f"--cadence {c}" for c in value) if value
                             else "no --cadence")
            else:
                parts.append(f"{flag} {value}" if value is not None else f"no {flag}")
        return ", ".join(parts)

    return (said(then), said(now)) if keys else None


@dataclass
class _Read:
    """A new job's scan of its input, let go once the plan is stored: the journal then holds all
    the job needs of it (a 10M-pair scan is ~300 MB a job would hold for the hours it sends)."""

    scan: InputScan | None = None


@dataclass(frozen=True)
class _Link:
    """Everything needed to reach Zoho: credentials, endpoints, transports, environment."""

    creds: Credentials
    endpoints: Endpoints
    transports: Transports
    env: Mapping[str, str]

    def clients(self, settings: RunSettings, redact: Redactor) -> _clients:
        return _clients(settings, self.creds, self.endpoints, self.transports, redact, self.env)


def _drive(settings: RunSettings, read: _Read, journal: Journal, link: _Link,
           log: JobLog, stopper: Stopper, redact: Redactor, ahead: _ResultsAhead
           ) -> _Stop | None:
    """The job's event loop: preflight, plan and load, send (``ahead`` begins the results as
    the sending starts). Returns why it stopped early."""
    try:
        loop = _new_loop()
    except MachineLimit as exc:
        return _Stop(str(exc), exc.exit_code)
    runner = asyncio.Runner(loop_factory=lambda: loop)
    try:
        return runner.run(_run(settings, read, journal, link, log, stopper, redact, ahead))
    except asyncio.CancelledError:  # cancelled before its first step
        if stopper.requested is None:
            raise
        return _Stop(stopper.message())
    finally:
        runner.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop; ``MachineLimit`` when the process has no descriptor left for it."""
    # CPython's loop that could not make its self-pipe fails again, in __del__, with an
    # AttributeError printed as "Exception ignored": it is freed within this block, unprinted
    with unraisable_ignored(AttributeError):
        try:
            return asyncio.new_event_loop()
        except OSError as exc:
            limit = machine_limit(exc, "the run")
            if limit is None:
                raise
    raise limit


async def _run(settings: RunSettings, read: _Read, journal: Journal, link: _Link,
               log: JobLog, stopper: Stopper, redact: Redactor, ahead: _ResultsAhead
               ) -> _Stop | None:
    def say(text: str, event: str = "message", *, always: bool = False) -> None:
        log.say(event, redact(text), always=always)

    reach = Reachability(settings.retry.outage_after, on_down=say,
                         where=link.endpoints.api_domain)
    with stopper.phase("loop", asyncio.current_task()):
        try:
            async with link.clients(settings, redact) as (client, auth):
                if journal.is_new:  # preflight, plan and load it
                    await _plan_job(settings, read, journal, client, auth, log, stopper, reach,
                                    say)
                    read.scan = None  # stored: the journal holds all the job needs of it
                elif not settings.dry_run and not _left_to_send(journal):
                    # a retry round is for a finished job: one stopped early (a nightly
                    # --max-calls budget, a signal, an outage) first sends what it has left,
                    # or each night's resume would spend a round before the job is done
                    requeued = journal.requeue_retryable(settings.max_retry_rounds)
                    if requeued:
                        say(f"sending again {requeued} pairs that failed for a reason worth "
                            "retrying")
                    elif left := journal.retryable_failures():
                        say(f"{left} pairs failed for a reason worth retrying, but this job "
                            f"has spent its {settings.max_retry_rounds} retry round(s); to try "
                            "them again, run its retry file as a new job")
                if settings.dry_run:
                    return None
                ahead.begin(journal)
                return await _execute(settings, journal, client, auth, log, reach, redact)
        except asyncio.CancelledError:
            if stopper.requested is None:
                raise
            return _Stop(stopper.message())
        except Halted as exc:  # nothing left to send: the job is finished, not halted
            return _Stop(redact(str(exc)), exc.exit_code) if _left_to_send(journal) else None
        except BatcherError as exc:
            if isinstance(exc, UsageError) and journal.is_new:  # a list for --all-cadences
                raise  # that cannot be read, an input written to while it was read: as the scan
            return _Stop(redact(str(exc)), exc.exit_code)
        except Exception as exc:  # a bug: the run stops, and the results still get written
            if limit := machine_limit(exc, "the run"):  # not a bug: a limit the machine set
                return _Stop(redact(str(limit)), limit.exit_code)
            if link.env.get("BATCHER_DEBUG"):
                raise
            return _Stop(redact(f"internal error ({type(exc).__name__}: {exc}); the journal "
                                "keeps every answer recorded — re-run the same command to "
                                "resume, and report this with BATCHER_DEBUG=1 set"))


def _left_to_send(journal: Journal) -> bool:
    """Whether batches of the job are still to be sent (pending, or sent without an answer)."""
    return any(k in OPEN_STATES for k in journal.batch_counts())


async def _plan_job(settings: RunSettings, read: _Read, journal: Journal,
                    client: httpx.AsyncClient, auth: ZohoAuth, log: JobLog, stopper: Stopper,
                    reach: Reachability, say: Callable[..., None]) -> None:
    """A new job: the org's cadences (``--all-cadences``), the input's warnings, the preflight,
    the plan loaded into the journal. What it made per pair is let go when it returns."""
    cadences = None
    if settings.all_cadences:
        cadences = await _org_cadences(client, auth, journal, settings.retry, reach)
        _say_record_list(cadences, say)
        journal.set_meta("record_list", _manual_by_module(cadences))
        with stopper.phase("raise"), log.phase(f"reading {settings.input}", "scan"):
            read.scan = scan_input(settings.input, settings.input_options(),
                                   records=_record_list(settings, journal))
        check_results_capacity(Path(settings.results), read.scan.rows)
    scan = read.scan
    assert scan is not None
    # kept: the summary and the page of every run of the job show them; what decides which rows
    # are sent is said even with --quiet
    warnings = [(line, event) for line, event in (
        (scan.rounded and rounding_line(scan), "rounded_ids"),
        (scan.unusual_ids and unusual_line(scan), "rounded_ids"),
        *sheet_lines(scan),
        (scan.module_named and module_named_line(scan), "module"),
        (swapped_columns_line(scan), "columns")) if line]
    for line, event in warnings:
        say(line, event, always=event != "columns")
    journal.set_meta("warnings", [line for line, _ in warnings])
    verdicts: list[tuple[str, str]] = []
    verdict_of_pair = None
    if settings.preflight:
        verdicts, verdict_of_pair = await _preflight(
            client, auth, scan, journal, say, settings.retry, reach, cadences)
    with stopper.phase("raise"):
        _plan_into(journal, scan, verdicts, verdict_of_pair, log.phase)


class _clients:
    """The API client (with shared-refresh auth) and the accounts client, closed together.

    Both decide on a proxy the same way, from the job's environment (``netio.proxy_for``), and
    neither reads the process's environment on its own.
    """

    def __init__(self, settings: RunSettings, creds: Credentials, endpoints: Endpoints,
                 transports: Transports, redact: Redactor, env: Mapping[str, str]) -> None:
        limits = httpx.Limits(max_connections=settings.concurrency,
                              max_keepalive_connections=settings.concurrency)
        try:
            accounts = transports.accounts or accounts_transport(endpoints.accounts_url, env)
            # httpx writes a request's headers and body separately: without TCP_NODELAY,
            # Nagle's algorithm can hold the body back for a delayed ACK
            api = transports.api or api_transport(endpoints.api_domain, env, limits=limits,
                                                  socket_options=[(socket.IPPROTO_TCP,
                                                                   socket.TCP_NODELAY, 1)])
        except ValueError as exc:
            raise UsageError(redact(str(exc))) from None
        self._accounts = httpx.AsyncClient(transport=accounts, timeout=settings.timeout,
                                           trust_env=False)
        self.auth = ZohoAuth(creds, endpoints, client=self._accounts, redactor=redact,
                             cache=default_cache(env, enabled=settings.token_cache))
        self.client = httpx.AsyncClient(auth=self.auth, transport=api, trust_env=False,
                                        timeout=settings.timeout, limits=limits)

    async def __aenter__(self) -> tuple[httpx.AsyncClient, ZohoAuth]:
        return self.client, self.auth

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self._accounts.aclose()


async def _org_cadences(client: httpx.AsyncClient, auth: ZohoAuth, journal: Journal,
                        policy: RetryPolicy, reach: Reachability) -> list[Cadence]:
    """The org's cadences; the GET calls count in the job's credits. Raises PermissionDenied
    when the token may not read them, AbortError when Zoho never answered usefully."""
    try:
        return await fetch_cadences(client, auth.api_domain, policy=policy, reach=reach,
                                    on_call=lambda: journal.count(credits=1))
    except TransientError as exc:  # Zoho answered, but never usefully: the job cannot start
        raise AbortError(f"could not read the org's cadences ({exc}); re-run the same command "
                         "to resume") from None
    finally:
        journal.add_counters()  # the GETs' credits, now


def _manual_by_module(cadences: list[Cadence]) -> dict[str, list[str]]:
    """module → ids of its cadences that allow un-enrolment (``manual_enrollment``)."""
    out: dict[str, list[str]] = {}
    for c in cadences:
        if c.type == MANUAL and c.module and (module := canonical_module(c.module)):
            out.setdefault(module, []).append(c.id)
    return out


def _record_list(settings: RunSettings, journal: Journal) -> RecordList | None:
    """The cadences a record list leaves with --all-cadences, as the job read them from the org
    (``unread`` when it never could: no row then names a cadence, and none is sent)."""
    if not settings.all_cadences:
        return None
    read = journal.get_meta("record_list")
    return RecordList(read or {}, unread=read is None)


def _say_record_list(cadences: list[Cadence], say) -> None:
    """Which cadences --all-cadences means, module by module (a few names and a count)."""
    manual = [c for c in cadences if c.type == MANUAL]
    by_module: dict[str, list[Cadence]] = {}
    for c in manual:
        by_module.setdefault(c.module or "?", []).append(c)
    if not by_module:
        say("--all-cadences: the org has no manual_enrollment cadence: nothing to leave")
    for module, these in sorted(by_module.items()):
        names = ", ".join(f"{c.name or c.id} ({c.id})" for c in these[:_PREFLIGHT_LINES])
        more = f" and {len(these) - _PREFLIGHT_LINES} more" if len(these) > _PREFLIGHT_LINES else ""
        say(f"--all-cadences: each {module} record leaves {len(these)} cadence(s): {names}{more}")


async def _preflight(client: httpx.AsyncClient, auth: ZohoAuth, scan: InputScan,
                     journal: Journal, say, policy: RetryPolicy, reach: Reachability,
                     cadences: list[Cadence] | None = None
                     ) -> tuple[list[tuple[str, str]], np.ndarray | None]:
    """Find the pairs whose cadence is unknown, of another module, or not manual: (verdicts
    as (code, reason), and for each pair the index of its verdict or -1). Its GET calls count
    in the job's credits (none when ``cadences`` were read already). Linear in the input's
    distinct cadences."""
    if cadences is None:
        try:
            cadences = await _org_cadences(client, auth, journal, policy, reach)
        except PermissionDenied as exc:
            say(f"warning: preflight skipped: {exc}", "preflight")
            return [], None
    keys = scan.cadence_keys()  # (module, cadence id) of each cadence code
    asked = {c for _, c in keys}
    journal.set_meta("cadence_names", {c.id: c.name for c in cadences if c.id in asked and c.name})
    found = preflight(keys, cadences)
    if not found:
        return [], None
    index = {verdict: i for i, verdict in enumerate(dict.fromkeys(found.values()))}
    of_code = np.array([index[found[k]] if k in found else -1 for k in keys], dtype=np.int64)
    for (module, cadence), (code, message) in list(found.items())[:_PREFLIGHT_LINES]:
        say(f"preflight: {module} cadence {cadence}: {code}: {message}", "preflight")
    if len(found) > _PREFLIGHT_LINES:
        say(f"preflight: and {len(found) - _PREFLIGHT_LINES} more cadences refused the same "
            "way (see the results)")
    return list(index), of_code[scan.codes.cadence]


def _plan_into(journal: Journal, scan: InputScan, verdicts: list[tuple[str, str]],
               verdict_of_pair: np.ndarray | None, phase: Phases) -> None:
    """Plan the pairs the preflight kept and load rows + batches into the journal in one
    transaction; the rows' verdicts are made from the scan's codes (no second read) and
    stored while the plan is made."""
    keep = None if verdict_of_pair is None else verdict_of_pair < 0
    pairs = scan.pairs if keep is None else int(keep.sum())
    plan: list[Plan] = []

    def planned() -> Plan:
        plan.append(plan_scan(scan, keep))
        return plan[0]

    def meta() -> dict[str, Any]:
        # `input`: what `batcher report` needs to read the input again for its own columns
        return {"blank": scan.blank, "planned_batches": plan[0].n_batches,
                "lower_bound": plan[0].lower_bound,
                "input": {"path": str(Path(scan.path).resolve()),
                          "options": asdict(scan.options)}}

    with phase(f"planning {pairs:,} pairs and storing {scan.rows:,} rows in the journal",
               "plan"):
        journal.load(scan.coded_tables(verdicts=verdicts, verdict_of_pair=verdict_of_pair),
                     planned, meta=meta)


async def _execute(settings: RunSettings, journal: Journal, client: httpx.AsyncClient,
                   auth: ZohoAuth, log: JobLog, reach: Reachability,
                   redact: Redactor) -> _Stop | None:
    waiting = {k: v for k, v in journal.batch_counts().items() if k in OPEN_STATES}
    progress = Progress(total_pairs=sum(v["pairs"] for v in waiting.values()),
                        total_batches=sum(v["batches"] for v in waiting.values()),
                        stream=log.stream, enabled=not settings.quiet,
                        emit=(lambda line, fields: log.say("progress", line, **fields))
                        if log.json else None)
    executor = Executor(client, journal, ExecutorSettings(
        concurrency=settings.concurrency, max_calls=settings.max_calls, retry=settings.retry,
        calm_seconds=settings.calm_seconds, halt_on_failures=settings.halt_on_failures),
        api_domain=lambda: auth.api_domain,
        on_progress=progress.update, reach=reach, redactor=redact)
    start = time.monotonic()
    lean_heap()  # the setup's arrays are gone: hours of sending keep no more than they use
    try:
        await executor.run(journal.pending_batches())
    finally:
        # the calls were counted as they went; what is left is this run's bookkeeping, which a
        # journal whose disk failed cannot take (the failure itself is what the run reports)
        with contextlib.suppress(BatcherError):
            journal.set_meta("token_refreshes", getattr(auth, "refreshes", 0))
            journal.set_meta("lowest_concurrency", executor.lowest_concurrency)
            journal.set_meta("send_s",
                             journal.get_meta("send_s", 0.0) + time.monotonic() - start)
        c: Counters = executor.counters
        progress.close(c)
    return None


def run_from_args(args, env: Mapping[str, str], stopper: Stopper | None = None,
                  reading: InputOptions | None = None) -> int:
    """``batcher run``: the parsed flags (``reading``: the input flags, as InputOptions)."""
    reading = reading or InputOptions()
    settings = RunSettings(
        input=args.input, results=args.results, journal=args.journal, module=args.module,
        concurrency=args.concurrency, max_calls=args.max_calls, dry_run=args.dry_run,
        preflight=not args.no_preflight, quiet=args.quiet, api_domain=args.api_domain,
        accounts_url=args.accounts_url, dc=args.dc, reading=reading,
        log_format=getattr(args, "log_format", "text"),
        token_cache=not getattr(args, "no_token_cache", False),
        halt_on_failures=getattr(args, "halt_on_failures", None))
    result = run_job(settings, env, stopper=stopper)
    if getattr(args, "json", False):  # for a scheduler: one object on stdout, the rest on stderr
        print(json.dumps({**result.summary.to_dict(), "exit_code": result.exit_code,
                          "aborted": result.aborted}))
    return result.exit_code


def report_from_journal(journal_path: str, results: str, stream: TextIO | None = None) -> int:
    """``batcher report``: rewrite a job's results from its journal; the exit code follows
    ``run``'s rules for the job it describes (3 while batches are left to send)."""
    stream = stream or sys.stdout
    path = Path(journal_path)
    if not path.exists():
        raise UsageError(f"no journal at {path}{where_journals_are(path)}")
    _check_results(Path(results))
    _not_the_input(path, _written_beside(Path(results)), f"--results {results}", "journal")
    with Journal.open(path, None) as journal:
        tally = Tally(journal)
        made = journal.get_meta("input") or {}
        if made.get("path"):
            _not_the_input(Path(made["path"]), _written_beside(Path(results)),
                           f"--results {results}")
        options = InputOptions(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in made.get("options", {}).items()})
        flags = journal.get_meta("run_flags") or {}
        settings = RunSettings(input=made.get("path", "INPUT"), results=results,
                               journal=str(path), module=options.module, reading=options,
                               **{k: flags[k] for k in _RUN_FLAGS if k in flags})
        carried, notes = None, []
        if made and Path(settings.input).exists():  # its columns, if it is the very input
            carried = _carried(settings, journal, notes)
        elif made:  # the results say what happened to every row all the same
            notes.append(f"the input's own columns are left out of the results: "
                         f"{settings.input} is gone")
        run_s, ended, never_ended = _run_times(journal)
        extra = {"rewritten_from_journal": str(path),
                 "warnings": journal.get_meta("warnings", []),
                 "aborted": journal.get_meta("aborted")}
        if never_ended:
            extra["run_never_ended"] = never_ended
        try:
            summary = write_results(tally, Path(results), duration_s=run_s, extra=extra,
                                    blank=journal.get_meta("blank", 0), carried=carried,
                                    cadence_names=journal.get_meta("cadence_names", {}),
                                    finished_at=ended,
                                    duration_lower_bound=bool(
                                        never_ended or journal.get_meta("run_s_lower_bound")))
        except (OSError, ValueError) as exc:
            raise AbortError(f"the results could not be written to {results} "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
        for line in dict.fromkeys([*notes, left_out_line(summary), cut_cells_line(summary, path),
                                   defused_cells_line(summary), never_ended]):
            if line:
                print(f"batcher: {printable(line)}", file=sys.stderr)
        unfinished = sum(v["pairs"] for k, v in journal.batch_counts().items()
                         if k in OPEN_STATES)
        try:
            page = write_report(tally, summary, report_path(Path(results)),
                                command=next_command(settings, Path(results), summary,
                                                     bool(unfinished)),
                                exit_code=3 if unfinished else summary.exit_code())
            summary = with_report(summary, page)
        except (OSError, BatcherError) as exc:
            print(f"batcher: the report could not be written ({exc})", file=sys.stderr)
    print(printable(summary.human()), file=stream)  # its codes are the server's
    if unfinished:
        print(f"batcher: the job is not finished: {unfinished} pairs are not sent yet; re-run "
              "its command to resume", file=stream)
        return 3
    return summary.exit_code()


def list_cadences(args, env: Mapping[str, str], *, transports: Transports = Transports(),
                  stream: TextIO | None = None) -> int:
    stream = stream or sys.stdout
    creds = load_credentials(env)
    endpoints = resolve_endpoints(args.api_domain, args.accounts_url, args.dc, env)
    settings = RunSettings(input="-", results="-",
                           token_cache=not getattr(args, "no_token_cache", False))

    async def fetch() -> list[Cadence]:
        redact = Redactor(creds.secrets())
        link = _Link(creds, endpoints, transports, env)
        async with link.clients(settings, redact) as (client, auth):
            reach = Reachability(settings.retry.outage_after, on_down=lambda text: print(
                f"batcher: {printable(redact(text))}", file=sys.stderr))
            return await fetch_cadences(client, auth.api_domain, reach=reach, redact=redact)

    cadences = asyncio.run(fetch())
    if args.module:
        modules = sorted({c.module for c in cadences if c.module})
        if args.module.lower() not in {m.lower() for m in modules}:  # a typo is not "0 cadences"
            raise UsageError(f"--module {args.module!r}: no cadence of this org is in that "
                             f"module; modules with cadences: {', '.join(modules) or 'none'}")
        cadences = [c for c in cadences if c.module.lower() == args.module.lower()]
    if args.json:
        print(json.dumps([asdict(c) for c in cadences]), file=stream)
    else:
        for c in cadences:
            print(printable(f"{c.id}  {c.module:<12} {c.type:<18} "
                            f"{'active' if c.active else 'inactive':<8} {c.name}"), file=stream)
        print(f"{len(cadences)} cadences", file=stream)
    return 0
