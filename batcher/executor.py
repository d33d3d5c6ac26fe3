"""The async engine: sends planned batches, classifies answers, records them in the journal.

Every answer is committed to the journal before the next step that depends on it, so a crash at
any point leaves either an answered batch (never sent again) or a pending one (sent again).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import httpx

from .errors import AbortError, AuthError, BudgetExhausted, TransientError
from .limiter import AdaptiveLimiter, LimiterSettings
from .models import Batch, OutcomeGroup, PairOutcome, Status
from .retry import RetryPolicy, call_with_retries
from .zoho.api import (
    JSON_HEADERS,
    Answered,
    Fatal,
    Rejected,
    TokenInvalid,
    Transient,
    Unlocated,
    build_request,
    encode_body,
)
from .zoho.api import classify as classify_answer


@dataclass(frozen=True)
class ExecutorSettings:
    concurrency: int = 4
    max_calls: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    calm_seconds: float = 5.0


@dataclass
class Counters:
    """What this run spent; the journal keeps the running totals across resumes."""

    calls: int = 0
    retries: int = 0
    throttled: int = 0
    batches_done: int = 0
    pairs_done: int = 0


class Executor:
    def __init__(self, client: httpx.AsyncClient, journal, settings: ExecutorSettings, *,
                 api_domain: Callable[[], str],
                 on_progress: Callable[[Counters], None] | None = None) -> None:
        self._client = client
        self._journal = journal
        self._s = settings
        self._api_domain = api_domain
        self._limiter = AdaptiveLimiter(LimiterSettings(
            max_concurrency=settings.concurrency, calm_seconds=settings.calm_seconds))
        self.counters = Counters()
        self._stop: AbortError | None = None
        self._sends: dict[str, int] = {}  # batch id → times sent, this run and earlier ones
        self._premarked: dict[str, int] = {}  # batches the feeder marked sent, not yet taken
        self._on_progress = on_progress or (lambda c: None)
        self._urls: dict[str, httpx.URL] = {}  # URL text → parsed once, not on every call
        self._extensions = {"timeout": client.timeout.as_dict()}

    @property
    def lowest_concurrency(self) -> int:
        return self._limiter.lowest

    async def run(self, batches: Iterable[Batch]) -> Counters:
        """Send every batch; on an abort (auth, permission, budget) stop taking new batches,
        let the calls in flight finish and record their answers, then raise the abort."""
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=self._s.concurrency * 4)
        # the journal's hot writes run in one thread of their own: SQLite lets go of the GIL, so
        # its disk work (commits, WAL checkpoints) no longer stalls every call in flight
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="batcher-journal")
        # twice as many workers as calls in flight (the limiter bounds those): while one worker
        # reads and records an answer, another already holds the slot it freed, so the server's
        # limit is used while the client works instead of waiting for it
        workers = [asyncio.create_task(self._worker(queue))
                   for _ in range(self._s.concurrency * 2)]
        feeder = asyncio.create_task(self._feed(queue, batches, len(workers)))
        try:
            with _gc_frozen():
                await asyncio.gather(*workers)
        finally:
            for task in [feeder, *workers]:
                task.cancel()
            await asyncio.gather(feeder, *workers, return_exceptions=True)
            self._db_thread.shutdown(wait=True)  # no journal write outlives the run
        if self._stop is not None:
            raise self._stop
        return self.counters

    async def _feed(self, queue: asyncio.Queue, batches: Iterable[Batch], n_workers: int) -> None:
        it = iter(batches)

        def take() -> list[Batch]:
            """The next few batches, marked sent together: one commit instead of one a call."""
            got = list(islice(it, _FEED_STEP))
            self._premarked.update(self._journal.mark_sent_many([b.batch_id for b in got]))
            return got

        while got := await self._in_db_thread(take):
            for batch in got:
                await queue.put(batch)
        for _ in range(n_workers):
            await queue.put(None)

    async def _worker(self, queue: asyncio.Queue) -> None:
        while self._stop is None:
            batch = await queue.get()
            if batch is None or self._stop is not None:
                return
            try:
                await self._process(batch)
            except AbortError as exc:
                self._stop = self._stop or exc
                return

    async def _process(self, batch: Batch) -> None:
        """Send a batch; re-send what is left after rejections or splits until all is answered."""
        stack = [batch]
        while stack:
            current = stack.pop()
            answer, attempts = await self._send(current)
            if isinstance(answer, Answered):
                await self._record(current, answer, attempts)
            else:
                stack.extend(self._settle(current, answer, attempts))
            self._on_progress(self.counters)

    def _in_db_thread(self, fn: Callable[..., Any], *args: object) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def _record(self, batch: Batch, answer: Answered, attempts: int) -> None:
        """The usual answer, recorded in the journal's thread, off the event loop."""
        groups = answer.groups
        if self._sends.pop(batch.batch_id, 1) > 1:
            groups = tuple(map(_hedge, groups))
        await self._in_db_thread(self._journal.record_groups, batch.batch_id, groups, attempts)
        self._done(batch, answer.pairs)

    def _settle(self, batch: Batch, answer, attempts: int) -> list[Batch]:
        """Record the answer; return the sub-batches that still have to be sent."""
        j = self._journal
        if isinstance(answer, Rejected):
            failed, children = _reject(batch, answer)
            j.settle_and_split(batch.batch_id, failed, children, attempts)
            self.counters.pairs_done += len(failed)
            return children
        if isinstance(answer, Unlocated):
            if len(batch.record_ids) * len(batch.cadence_ids) == 1:
                j.record_outcomes(batch.batch_id, _all(batch, Status.FAILED, answer.code,
                                                       answer.message, answer.http_status),
                                  attempts)
                self._done(batch, 1)
                return []
            children = _halves(batch)
            j.settle_and_split(batch.batch_id, [], children, attempts)
            return children
        if isinstance(answer, TransientError):
            outcomes = _all(batch, Status.FAILED, answer.code or "TRANSIENT_ERROR", str(answer),
                            answer.http_status, retryable=True)
            j.record_outcomes(batch.batch_id, outcomes, attempts)
            self._done(batch, len(outcomes))
            return []
        raise TypeError(f"unexpected answer {answer!r}")  # pragma: no cover

    def _done(self, batch: Batch, pairs: int) -> None:
        self.counters.batches_done += 1
        self.counters.pairs_done += pairs

    async def _send(self, batch: Batch):
        """One batch through the retry policy: (answer, attempts)."""
        attempts = 0

        async def once():
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self.counters.retries += 1
            return await self._call(batch)

        try:
            answer, _ = await call_with_retries(once, self._s.retry, on_retry=self._on_retry)
        except TransientError as exc:
            return exc, attempts
        except httpx.TransportError as exc:
            return _transport_failure(exc), attempts
        return answer, attempts

    def _check_go(self) -> None:
        """Raise the abort that stopped the job, or the spent budget, before another call."""
        if self._stop is not None:  # an abort came while this worker waited
            raise self._stop
        budget = self._s.max_calls
        if budget is not None and self.counters.calls >= budget:  # a budget per run
            raise BudgetExhausted(
                f"--max-calls {budget} reached; re-run the same command to continue")

    def _on_retry(self, attempt: int, exc: BaseException, wait: float) -> None:
        if isinstance(exc, TransientError) and exc.throttled:
            self._limiter.throttled(wait)

    async def _call(self, batch: Batch):
        self._check_go()
        # "sent" is committed before the call can leave — a kill -9 at any moment then leaves a
        # journal that knows the call may have been applied, so a re-send's "not enrolled" is
        # reported with that doubt — but outside the slot, so the server's limit is not left idle
        # during the commit (the spare workers hold the slots meanwhile)
        premarked = self._premarked.pop(batch.batch_id, None)  # first attempts: by the feeder
        self._sends[batch.batch_id] = premarked or await self._in_db_thread(
            self._journal.mark_sent, batch.batch_id)
        async with self._limiter:
            self._check_go()
            self.counters.calls += 1  # counted before the await, so no other worker overspends
            url, body = build_request(self._api_domain(), batch.module, batch.record_ids,
                                      batch.cadence_ids)
            parsed = self._urls.get(url)
            if parsed is None:
                parsed = self._urls[url] = httpx.URL(url)
            # built here, not by client.post: merging the client's base URL, headers, cookies and
            # timeouts into every call is event-loop time the call does not need
            request = httpx.Request("POST", parsed, content=encode_body(body),
                                    headers=JSON_HEADERS, extensions=self._extensions)
            response = await self._client.send(request)
            content = await response.aread()
        # the worker woken by the freed slot sends its call first; this answer is read after
        await asyncio.sleep(0)
        answer = classify_answer(batch.record_ids, batch.cadence_ids, response.status_code,
                                 response.headers, content)
        if isinstance(answer, Transient):
            if answer.throttled:
                self.counters.throttled += 1
            raise answer.to_error()
        if isinstance(answer, Fatal):
            raise answer.to_error()
        if isinstance(answer, TokenInvalid):
            raise AuthError("Zoho still answers INVALID_TOKEN after a token refresh; check that "
                            "the refresh token is valid and belongs to this data centre")
        return answer


_FEED_STEP = 8  # batches marked sent in one journal transaction by the feeder


@contextmanager
def _gc_frozen() -> Iterator[None]:
    """Spare every full garbage collection of the send phase a scan of what lives through it.

    Modules, the input and the plan (tens of thousands of objects) outlive the send phase; each
    full collection re-scanned them, stalling the event loop, and so every call in flight, for
    tens of milliseconds. Frozen, they are skipped; they are handed back to the collector after.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _all(batch: Batch, status: Status, code: str, message: str, http_status: int | None,
         retryable: bool = False) -> list[PairOutcome]:
    return [PairOutcome(r, c, status, code, message, http_status, retryable)
            for r, c in batch.pairs()]


def _hedge(group: OutcomeGroup) -> OutcomeGroup:
    """A re-sent call's "not enrolled" may be the work of an earlier send whose answer was lost."""
    if group.status != Status.NOT_ENROLLED:
        return group
    return replace(group, message=(group.message + "; " if group.message else "") +
                   "an earlier attempt of this call, whose answer was lost, may have removed it")


def _reject(batch: Batch, answer: Rejected) -> tuple[list[PairOutcome], list[Batch]]:
    """Fail the pairs the API named; the rest of the batch goes back as one child."""
    bad_r = {batch.record_ids[i] for i in answer.bad_record_idx if i < len(batch.record_ids)}
    bad_c = {batch.cadence_ids[i] for i in answer.bad_cadence_idx if i < len(batch.cadence_ids)}
    if not bad_r and not bad_c:  # a path outside the batch: treat as unlocated
        return [], _halves(batch)
    failed = [PairOutcome(r, c, Status.FAILED, answer.code, answer.message, answer.http_status)
              for r, c in batch.pairs() if r in bad_r or c in bad_c]
    records = tuple(r for r in batch.record_ids if r not in bad_r)
    cadences = tuple(c for c in batch.cadence_ids if c not in bad_c)
    children = []
    if records and cadences:
        children.append(Batch(f"{batch.batch_id}.1", batch.module, records, cadences))
    return failed, children


def _halves(batch: Batch) -> list[Batch]:
    """Split to isolate a culprit the API did not name: records first, then cadences."""
    r, c = batch.record_ids, batch.cadence_ids
    if len(r) > 1:
        parts = [(r[: len(r) // 2], c), (r[len(r) // 2:], c)]
    else:
        parts = [(r, c[: len(c) // 2]), (r, c[len(c) // 2:])]
    return [Batch(f"{batch.batch_id}.{i}", batch.module, rr, cc)
            for i, (rr, cc) in enumerate(parts, 1)]


def _transport_failure(exc: httpx.TransportError) -> TransientError:
    code = "TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "CONNECTION_ERROR"
    return TransientError(f"no answer from Zoho after retries: {type(exc).__name__}", code=code)
