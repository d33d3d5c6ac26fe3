"""The job as a library: what `batcher run`, `report` and `cadences` do, callable from a scheduler.

Order of a run: read and validate → (new journal) preflight, plan, load the journal → send what is
pending → write results from the journal. The results are written whatever happens after the
journal exists, so an aborted job still says what happened to every row.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import httpx
import numpy as np

from .config import Credentials, Endpoints, load_credentials, resolve_endpoints
from .errors import AbortError, Interrupted, PermissionDenied, UsageError
from .executor import Counters, Executor, ExecutorSettings
from .inputs import INVALID, InputScan, check_input, file_fingerprint, scan_input
from .journal import Journal, utc_now
from .netio import AsyncioTransport
from .planreport import plan_scan
from .progress import Progress
from .report import Summary, UnplannedResults, write_results
from .retry import RetryPolicy
from .zoho.auth import ZohoAuth
from .zoho.cadences import Cadence, fetch_cadences, preflight


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
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    calm_seconds: float = 5.0

    def journal_path(self) -> Path:
        if self.journal:
            return Path(self.journal)
        results = Path(self.results)
        return results.with_name(results.stem + ".journal")


@dataclass(frozen=True)
class JobResult:
    summary: Summary
    exit_code: int
    aborted: str | None = None


@dataclass(frozen=True)
class Transports:
    """Injected HTTP transports (tests, the in-process sandbox); None means the real network."""

    api: httpx.AsyncBaseTransport | None = None
    accounts: httpx.AsyncBaseTransport | None = None


def _check(settings: RunSettings) -> None:
    if settings.concurrency < 1 or settings.concurrency > 25:
        raise UsageError("--concurrency must be between 1 and 25 (Zoho's largest per-app limit)")
    if settings.max_calls is not None and settings.max_calls < 0:
        raise UsageError("--max-calls must not be negative")
    if Path(settings.results).resolve() == Path(settings.input).resolve():
        raise UsageError("--results must not be the input file")
    if not Path(settings.results).parent.exists():
        raise UsageError(f"--results: folder {Path(settings.results).parent} does not exist")


def fingerprint(settings: RunSettings) -> str:
    """What a journal is bound to: the input's bytes and the flags that change the plan."""
    h = hashlib.sha256(file_fingerprint(settings.input).encode())
    h.update(json.dumps({"module": settings.module}).encode())
    return h.hexdigest()


def run_job(settings: RunSettings, env: Mapping[str, str], *,
            transports: Transports = Transports(), stream: TextIO | None = None) -> JobResult:
    """Run (or resume) a job to the end; never raises for what the results can report."""
    stream = stream or sys.stderr
    _check(settings)
    check_input(settings.input, settings.module)  # an unusable file stops before any journal
    started = time.monotonic()
    needs_api = not settings.dry_run or settings.preflight
    creds = load_credentials(env) if needs_api else Credentials(access_token="-")
    endpoints = resolve_endpoints(settings.api_domain, settings.accounts_url, settings.dc, env)
    with _journal_for(settings, fingerprint(settings)) as journal:
        # a resumed job needs nothing of its input but the fingerprint: no second scan of a
        # file of tens of millions of rows
        scan = scan_input(settings.input, settings.module) if journal.is_new else None
        aborted: str | None = None
        try:
            with _sigterm_as_interrupt():
                aborted = asyncio.run(_run(settings, scan, journal, creds, endpoints,
                                           transports, stream))
        except (KeyboardInterrupt, Interrupted):
            aborted = "interrupted; re-run the same command to resume"
        source = journal
        if scan is not None and journal.rows == 0:  # stopped before the plan was loaded
            source = UnplannedResults(scan.rows, scan.tables, utc_now(), f"not sent: {aborted}")
        summary = write_results(source, Path(settings.results),
                                duration_s=time.monotonic() - started,
                                extra={"dry_run": settings.dry_run, "aborted": aborted,
                                       "send_s": journal.get_meta("send_s", 0.0),
                                       "token_refreshes": journal.get_meta("token_refreshes", 0),
                                       "lowest_concurrency":
                                           journal.get_meta("lowest_concurrency")})
    if not settings.quiet:
        print(summary.human(), file=stream)
        if aborted:
            print(f"batcher: aborted: {aborted}", file=stream)
    code = 3 if aborted else summary.exit_code()
    if settings.dry_run and not aborted:
        code = 1 if summary.by_status.get(INVALID) else 0
    return JobResult(summary=summary, exit_code=code, aborted=aborted)


@contextmanager
def _journal_for(settings: RunSettings, fp: str) -> Iterator[Journal]:
    if settings.dry_run:  # a rehearsal must not leave a journal a real run would resume from
        with tempfile.TemporaryDirectory(prefix="batcher-dry-") as tmp, \
                Journal.open(Path(tmp) / "dry.journal", fp) as journal:
            yield journal
    else:
        with Journal.open(settings.journal_path(), fp) as journal:
            yield journal


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Schedulers stop jobs with SIGTERM: treat it like Ctrl-C so results are still written."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a worker thread of a scheduler)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _run(settings: RunSettings, scan: InputScan | None, journal: Journal,
               creds: Credentials, endpoints: Endpoints, transports: Transports, stream: TextIO
               ) -> str | None:
    async with _clients(settings, creds, endpoints, transports) as (client, auth):
        try:
            if scan is not None:  # a new journal: preflight, plan and load it
                verdicts: list[tuple[str, str]] = []
                verdict_of_pair = None
                if settings.preflight:
                    verdicts, verdict_of_pair = await _preflight(client, auth, scan, journal,
                                                                 stream, settings.quiet)
                _plan_into(journal, scan, verdicts, verdict_of_pair)
            if settings.dry_run:
                return None
            return await _execute(settings, journal, client, auth, stream)
        except AbortError as exc:
            return str(exc)


class _clients:
    """The API client (with shared-refresh auth) and the accounts client, closed together."""

    def __init__(self, settings: RunSettings, creds: Credentials, endpoints: Endpoints,
                 transports: Transports) -> None:
        self._accounts = httpx.AsyncClient(transport=transports.accounts,
                                           timeout=settings.timeout)
        self.auth = ZohoAuth(creds, endpoints, client=self._accounts)
        limits = httpx.Limits(max_connections=settings.concurrency,
                              max_keepalive_connections=settings.concurrency)
        # httpx writes a request's headers and body separately: without TCP_NODELAY, Nagle's
        # algorithm can hold the body back for a delayed ACK
        api = transports.api or AsyncioTransport(limits=limits, socket_options=[
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.client = httpx.AsyncClient(auth=self.auth, transport=api,
                                        timeout=settings.timeout, limits=limits)

    async def __aenter__(self) -> tuple[httpx.AsyncClient, ZohoAuth]:
        return self.client, self.auth

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self._accounts.aclose()


async def _preflight(client: httpx.AsyncClient, auth: ZohoAuth, scan: InputScan,
                     journal: Journal, stream: TextIO, quiet: bool
                     ) -> tuple[list[tuple[str, str]], np.ndarray | None]:
    """Find the pairs whose cadence is unknown, of another module, or not manual: (verdicts
    as (code, reason), and for each pair the index of its verdict or -1). Its GET calls count
    in the job's credits."""
    gets = 0

    def count() -> None:
        nonlocal gets
        gets += 1

    try:
        cadences: list[Cadence] = await fetch_cadences(client, auth.api_domain, on_call=count)
    except PermissionDenied as exc:
        if not quiet:
            print(f"batcher: warning: preflight skipped: {exc}", file=stream)
        return [], None
    finally:
        journal.add_counters(credits=gets)
    keys = scan.cadence_keys()  # (module, cadence id) of each cadence code
    found = preflight(keys, cadences)
    if not found:
        return [], None
    verdicts = list(dict.fromkeys(found.values()))
    of_code = np.array([verdicts.index(found[k]) if k in found else -1 for k in keys],
                       dtype=np.int64)
    if not quiet:
        for (module, cadence), (code, message) in found.items():
            print(f"batcher: preflight: {module} cadence {cadence}: {code}: {message}",
                  file=stream)
    return verdicts, of_code[scan.codes.cadence]


def _plan_into(journal: Journal, scan: InputScan, verdicts: list[tuple[str, str]],
               verdict_of_pair: np.ndarray | None) -> None:
    """Plan the pairs the preflight kept and load rows + batches into the journal in one
    transaction, streaming the rows from a second read of the input."""
    keep = None if verdict_of_pair is None else verdict_of_pair < 0
    plan = plan_scan(scan, keep)
    pair_batch = plan.pair_batch
    rows = scan.tables(verdicts=verdicts, verdict_of_pair=verdict_of_pair,
                       batch_ids=lambda k0, k1: plan.batch_ids(pair_batch[k0:k1]))
    journal.load(rows, plan.iter_batches())
    journal.set_meta("planned_batches", plan.n_batches)
    journal.set_meta("lower_bound", plan.lower_bound)


async def _execute(settings: RunSettings, journal: Journal, client: httpx.AsyncClient,
                   auth: ZohoAuth, stream: TextIO) -> str | None:
    waiting = {k: v for k, v in journal.batch_counts().items() if k in ("pending", "sent")}
    progress = Progress(total_pairs=sum(v["pairs"] for v in waiting.values()),
                        total_batches=sum(v["batches"] for v in waiting.values()),
                        stream=stream, enabled=not settings.quiet)
    executor = Executor(client, journal, ExecutorSettings(
        concurrency=settings.concurrency, max_calls=settings.max_calls, retry=settings.retry,
        calm_seconds=settings.calm_seconds), api_domain=lambda: auth.api_domain,
        on_progress=progress.update)
    aborted = None
    start = time.monotonic()
    try:
        await executor.run(journal.pending_batches())
    except AbortError as exc:
        aborted = str(exc)
    finally:
        c: Counters = executor.counters
        journal.add_counters(calls=c.calls, retries=c.retries, throttled=c.throttled,
                             credits=c.calls)
        journal.set_meta("token_refreshes", getattr(auth, "refreshes", 0))
        journal.set_meta("lowest_concurrency", executor.lowest_concurrency)
        journal.set_meta("send_s", journal.get_meta("send_s", 0.0) + time.monotonic() - start)
        progress.close(c)
    return aborted


def run_from_args(args, env: Mapping[str, str]) -> int:
    settings = RunSettings(
        input=args.input, results=args.results, journal=args.journal, module=args.module,
        concurrency=args.concurrency, max_calls=args.max_calls, dry_run=args.dry_run,
        preflight=not args.no_preflight, quiet=args.quiet, api_domain=args.api_domain,
        accounts_url=args.accounts_url, dc=args.dc)
    return run_job(settings, env).exit_code


def report_from_journal(journal_path: str, results: str, stream: TextIO | None = None) -> int:
    stream = stream or sys.stdout
    path = Path(journal_path)
    if not path.exists():
        raise UsageError(f"{path}: no such journal")
    with Journal.open(path, None) as journal:
        summary = write_results(journal, Path(results), duration_s=0.0,
                                extra={"rewritten_from_journal": str(path)})
    print(summary.human(), file=stream)
    return summary.exit_code()


def list_cadences(args, env: Mapping[str, str], *, transports: Transports = Transports(),
                  stream: TextIO | None = None) -> int:
    stream = stream or sys.stdout
    creds = load_credentials(env)
    endpoints = resolve_endpoints(args.api_domain, args.accounts_url, args.dc, env)

    async def fetch() -> list[Cadence]:
        settings = RunSettings(input="-", results="-")
        async with _clients(settings, creds, endpoints, transports) as (client, auth):
            return await fetch_cadences(client, auth.api_domain)

    cadences = asyncio.run(fetch())
    if args.module:
        cadences = [c for c in cadences if c.module.lower() == args.module.lower()]
    if args.json:
        print(json.dumps([asdict(c) for c in cadences]), file=stream)
    else:
        for c in cadences:
            print(f"{c.id}  {c.module:<12} {c.type:<18} {'active' if c.active else 'inactive':<8}"
                  f" {c.name}", file=stream)
        print(f"{len(cadences)} cadences", file=stream)
    return 0
