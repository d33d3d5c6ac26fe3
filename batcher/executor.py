"""The async engine: sends planned batches, classifies answers, records them in the journal.

Every answer is committed to the journal before the next step that depends on it, so a crash at
any point leaves either an answered batch (never sent again) or a pending one (sent again).

The run is supervised: a task that fails (the feeder, a worker, a journal write in its thread)
stops the whole run at once — never a silent wait. An abort (budget, credentials, an outage, a
wait too long) stops taking batches, wakes every worker that waits, and lets the calls in flight
be answered and recorded. Cancelling the run (a signal) abandons the calls in flight: their
batches stay "sent" and are sent again on resume (un-enrolment is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Any

import httpx

from .errors import (
    AbortError,
    AuthError,
    BatcherError,
    BudgetExhausted,
    EngineError,
    Halted,
    JournalIOError,
    TransientError,
    ZohoUnreachable,
    machine_limit,
)
from .hostsettings import collector_spared
from .limiter import AdaptiveLimiter, LimiterSettings
from .models import Batch, OutcomeGroup, PairOutcome, Status
from .redact import Redactor
from .retry import NETWORK_ERRORS, Reachability, RetryPolicy, call_with_retries, is_unsent
from .zoho.api import (
    JSON_HEADERS,
    Answered,
    Fatal,
    ForeignStreak,
    Rejected,
    TokenInvalid,
    Transient,
    Unlocated,
    build_request,
    encode_body,
    origin,
    read_answer,
    redacted,
)
from .zoho.api import classify as classify_answer


@dataclass(frozen=True)
class ExecutorSettings:
    concurrency: int = 4
    max_calls: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    calm_seconds: float = 5.0
    #: stop (exit 3, resumable) when more than this % of the answered pairs failed for a reason
    #: a re-send does not cure, once ``HALT_AFTER`` pairs were answered; None: never
    halt_on_failures: float | None = None


HALT_AFTER = 500  # answered pairs before --halt-on-failures judges: a few early refusals are noise


@dataclass
class Counters:
    """What this run spent; the journal keeps the running totals across resumes."""

    calls: int = 0
    retries: int = 0
    throttled: int = 0
    batches_done: int = 0
    pairs_done: int = 0
    #: pairs an answer named, and those it refused for good (failed, not retryable)
    pairs_answered: int = 0
    pairs_refused: int = 0


#: a worker stops on these and lets the others finish their calls; anything else stops the run
_GRACEFUL = (AbortError,)
_NOT_GRACEFUL = (JournalIOError, EngineError)
_CLEANUP_S = 1.0  # how long cancelled tasks get to unwind before the run returns anyway
_GRACE_S = 0.5  # how long the other workers get to record answers in hand when a task fails


#: an answer this short is judged while its call's slot is held (see Executor._call): every
#: whole-request answer is (a code, a message), and an answer of entries for 100 records is not
_SHORT = 2048


class Executor:
    def __init__(self, client: httpx.AsyncClient, journal, settings: ExecutorSettings, *,
                 api_domain: Callable[[], str],
                 on_progress: Callable[[Counters], None] | None = None,
                 reach: Reachability | None = None,
                 redactor: Redactor | None = None) -> None:
        self._client = client
        self._journal = journal
        self._s = settings
        self._api_domain = api_domain
        self._limiter = AdaptiveLimiter(LimiterSettings(
            max_concurrency=settings.concurrency, calm_seconds=settings.calm_seconds))
        self._reach = reach or Reachability(settings.retry.outage_after)
        self._redact = redactor or Redactor()
        self.counters = Counters()
        self._stop: AbortError | None = None
        self._stopping = asyncio.Event()
        self._sends: dict[str, int] = {}  # batch id → times sent, this run and earlier ones
        #: batches whose attempts all failed before reaching a server: (batch id, why)
        self._never_sent: list[tuple[str, str]] = []
        # per batch, this run's marks as sent, and its calls that may have been applied (they
        # left, and no answer said they were not): a batch marked but with none of those is
        # unmarked when the run ends, so its rows never say "sent, no answer"
        self._marks: Counter[str] = Counter()
        self._maybe_applied: Counter[str] = Counter()
        # calls counted whose request is still on its way out (or back), and the event set
        # (then replaced) each time one settles
        self._leaving = 0
        self._left = asyncio.Event()
        self._on_progress = on_progress or (lambda c: None)
        self._urls: dict[str, httpx.URL] = {}  # URL text → parsed once, not on every call
        self._extensions = {"timeout": client.timeout.as_dict()}
        # the request's own headers, normalised once: each request copies them (the auth flow
        # adds its header to the copy) instead of encoding a dict again through a Mapping check
        self._headers = httpx.Headers(JSON_HEADERS)
        #: answers no Zoho API gives, in a row: the domain is wrong (stops the run)
        self._foreign = ForeignStreak()

    @property
    def lowest_concurrency(self) -> int:
        return self._limiter.lowest

    async def run(self, batches: Iterable[Batch]) -> Counters:
        """Send every batch. Raises the abort that stopped it (``AbortError``), the failure of a
        task (``JournalError``, ``JournalIOError``, ``EngineError``), or ``CancelledError``."""
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=self._s.concurrency * 4)
        # the journal's hot writes run in one thread of their own: SQLite lets go of the GIL, so
        # its disk work (commits, WAL checkpoints) no longer stalls every call in flight
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="batcher-journal")
        # twice as many workers as calls in flight (the limiter bounds those): while one worker
        # reads and records an answer, another already holds the slot it freed, so the server's
        # limit is used while the client works instead of waiting for it
        workers = [asyncio.create_task(self._worker(queue), name=f"worker {i + 1}")
                   for i in range(self._s.concurrency * 2)]
        feeder = asyncio.create_task(self._feed(queue, batches, len(workers)), name="feeder")
        try:
            with collector_spared(_SEND_GC_THRESHOLD0):
                await _supervise(feeder, workers, self._halt)
        finally:
            for task in [feeder, *workers]:
                task.cancel()
            # bounded: a task that does not unwind in time is left behind, not waited on forever
            await asyncio.wait([feeder, *workers], timeout=_CLEANUP_S)
            self._db_thread.shutdown(wait=True)  # no journal write outlives the run
            with contextlib.suppress(JournalIOError):  # a failing disk is what the run reports
                self._journal.add_counters()  # the calls counted since the last commit
                self._journal.mark_unsent({b: n for b, n in self._marks.items()
                                           if not self._maybe_applied[b]})
        if isinstance(self._stop, Halted):  # the answers that came after it tripped count too
            self._stop = Halted(self._halted_text())
        if self._stop is not None:
            raise self._stop
        if self._never_sent:
            batch_id, why = self._never_sent[0]
            raise ZohoUnreachable(
                f"{len(self._never_sent)} batch(es) could not reach {self._api_domain()} in any "
                f"of their attempts (batch {batch_id}: {why}) while other calls were answered: "
                "their pairs were never sent and stay not_sent (not failed) — re-run the same "
                "command to send them")
        return self.counters

    async def _feed(self, queue: asyncio.Queue, batches: Iterable[Batch], n_workers: int) -> None:
        it = iter(batches)

        def take() -> list[Batch]:
            """The next few batches, read from the journal in its thread (not yet marked sent:
            a batch is marked by the worker about to send it)."""
            return list(islice(it, _FEED_STEP))

        while self._stop is None and (got := await self._in_db_thread(take)):
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
            except _NOT_GRACEFUL:
                raise
            except _GRACEFUL as exc:
                await self._halt(exc)
                return

    async def _halt(self, exc: AbortError) -> None:
        """Stop taking batches and wake every worker that sleeps or waits for a slot."""
        self._stop = self._stop or exc
        self._stopping.set()
        self._left.set()
        await self._limiter.wake()

    def _settled(self) -> None:
        """A call has left or found it could not: wake the workers waiting for the budget."""
        self._leaving -= 1
        self._left.set()
        self._left = asyncio.Event()

    async def _process(self, batch: Batch) -> None:
        """Send a batch; re-send what is left after rejections or splits until all is answered."""
        stack = [batch]
        isolation: _Isolation | None = None
        left_open = False  # a piece never reached a server: the batch stays for the next run
        while stack:
            current = stack.pop()
            answer, attempts = await self._send(current)
            # shown per row: every call that carried its pairs, this run's and earlier runs'
            # (a batch whose answer a signal lost, sent again), and a split batch's parent's
            attempts = max(attempts, self._sends.get(current.batch_id, 0))
            if isinstance(answer, _NeverSent):
                # its pairs were never sent: not failed; the batch is open for the next run
                self._never_sent.append((current.batch_id, answer.reason))
                left_open = True
                continue
            if isinstance(answer, Rejected) and not _names_one_of(current, answer):
                answer = Unlocated(answer.code, answer.message, answer.http_status)
            if isinstance(answer, Answered):
                if isolation is not None:
                    isolation.accepted(current)
                await self._record(current, answer, attempts)
            else:
                if isinstance(answer, Unlocated) and isolation is None:
                    isolation = _Isolation(batch)
                stack.extend(await self._settle(current, answer, attempts, isolation))
            if not stack and not left_open:
                # once, however many pieces its refusals split it into: progress counts the
                # batches handed out, and a split's pieces are none of them
                self.counters.batches_done += 1
            self._on_progress(self.counters)

    def _in_db_thread(self, fn: Callable[..., Any], *args: object) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def _record(self, batch: Batch, answer: Answered, attempts: int) -> None:
        """The usual answer, recorded in the journal's thread, off the event loop."""
        groups = answer.groups
        if self._unconfirmed_before(batch.batch_id):
            groups = tuple(map(_hedge, groups))
        await self._in_db_thread(self._journal.record_groups, batch.batch_id, groups, attempts)
        self.counters.pairs_done += answer.pairs
        await self._judge((len(g.record_ids) * len(g.cadence_ids), g) for g in groups)

    def _unconfirmed_before(self, batch_id: str) -> bool:
        """Whether a send of the batch before the one answered may have been applied without
        an answer saying so: one of an earlier run (or of the batch a requeue came from), or one
        of this run that reached a server and was not refused outright (a timeout, a 5xx; not a
        429, nor an expired token)."""
        sends = self._sends.pop(batch_id, 1)
        return sends > self._marks[batch_id] or self._maybe_applied[batch_id] > 1

    async def _settle(self, batch: Batch, answer, attempts: int,
                      isolation: _Isolation | None) -> list[Batch]:
        """Record the answer; return the sub-batches that still have to be sent."""
        j = self._journal
        if isinstance(answer, Rejected):
            failed, children = _reject(batch, answer)
        elif isinstance(answer, Unlocated):
            assert isolation is not None
            failed, children = isolation.refused(batch, answer)
        elif isinstance(answer, TransientError):
            outcomes = _all(batch, Status.FAILED, answer.code or "TRANSIENT_ERROR",
                            self._redact(str(answer)), answer.http_status, retryable=True)
            await self._in_db_thread(j.record_outcomes, batch.batch_id, outcomes, attempts)
            self.counters.pairs_done += len(outcomes)
            return []
        else:  # pragma: no cover
            raise TypeError(f"unexpected answer {answer!r}")
        await self._in_db_thread(j.settle_and_split, batch.batch_id, failed, children, attempts)
        self.counters.pairs_done += len(failed)
        await self._judge((1, o) for o in failed)
        return children

    async def _judge(self, outcomes: Iterable[tuple[int, Any]]) -> None:
        """Count answered pairs (each outcome stands for ``n`` pairs) and those refused for
        good; past ``halt_on_failures`` the run stops taking batches (resumable, exit 3)."""
        c = self.counters
        for n, o in outcomes:
            c.pairs_answered += n
            c.pairs_refused += n if o.status == Status.FAILED and not o.retryable else 0
        pct = self._s.halt_on_failures
        if pct is not None and c.pairs_answered >= HALT_AFTER and self._stop is None \
                and c.pairs_refused * 100 > pct * c.pairs_answered:
            await self._halt(Halted(self._halted_text()))

    def _halted_text(self) -> str:
        """Why --halt-on-failures stopped the run, in the counts of the whole run: told again
        once the calls in flight when it tripped are answered, so its figures are the results'
        (a first run's) and the summary's."""
        c, pct = self.counters, self._s.halt_on_failures
        share = 100 * c.pairs_refused / max(c.pairs_answered, 1)
        return (f"halted by --halt-on-failures {pct:g}: {c.pairs_refused} of the "
                f"{c.pairs_answered} pairs answered this run ({share:.0f}%) failed for a reason "
                f"a re-send does not cure (see the results' codes), after {c.calls} calls "
                "(credits) this run; nothing more is sent — fix the input (module, org) or "
                "re-run the same command to go on")

    async def _send(self, batch: Batch):
        """One batch through the retry policy: (answer, attempts); a ``_NeverSent`` when its
        attempts ran out and none reached a server."""
        attempts = 0
        reached = False

        async def once():
            nonlocal attempts, reached
            attempts += 1
            if attempts > 1:
                self.counters.retries += 1
                self._journal.count(retries=1)
            try:
                answer = await self._call(batch)
            except Exception as exc:
                if limit := machine_limit(exc, "sending"):  # no socket left: not an outage
                    raise limit from None
                reached = reached or not is_unsent(exc)
                raise
            reached = True
            return answer

        try:
            answer, _ = await call_with_retries(once, self._s.retry, on_retry=self._on_retry,
                                                sleep=self._nap, reach=self._reach)
        except (TransientError, *NETWORK_ERRORS) as exc:
            if not reached and is_unsent(exc):
                return _NeverSent(_unsent_reason(exc)), attempts
            return (exc if isinstance(exc, TransientError) else _transport_failure(exc)), attempts
        return answer, attempts

    async def _nap(self, seconds: float) -> None:
        """A retry's wait, cut short when the run stops (the next attempt then raises)."""
        if seconds > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    def _check_go(self) -> None:
        """Raise the abort that stopped the job, or the spent budget, before another call: spent
        once the calls counted fill it and none of them is still leaving (one that finds no
        connection gives its call back: an outage spends no budget, and is said as one)."""
        if self._stop is not None:  # an abort came while this worker waited
            raise self._stop
        budget = self._s.max_calls
        if budget is not None and self.counters.calls >= budget and not self._leaving:
            raise BudgetExhausted(
                f"--max-calls {budget} reached; re-run the same command to continue")

    async def _budget_room(self) -> None:
        """Return once one more call fits the budget (a budget per run); while the calls that
        fill it are still leaving, wait for them (:meth:`_check_go` raises when it is spent)."""
        budget = self._s.max_calls
        while True:
            self._check_go()
            if budget is None or self.counters.calls < budget:
                return
            await self._left.wait()

    def _on_retry(self, attempt: int, exc: BaseException, wait: float) -> None:
        if isinstance(exc, TransientError) and exc.throttled:
            self._limiter.throttled(wait)

    async def _call(self, batch: Batch):
        self._check_go()
        # "sent" is committed before the call can leave — a kill -9 at any moment then leaves a
        # journal that knows the call may have been applied, so a re-send's "not enrolled" is
        # reported with that doubt — but outside the slot, so the server's limit is not left idle
        # during the commit (the spare workers hold the slots meanwhile). Marked by the worker,
        # not ahead by the feeder: after a kill -9, the batches marked that never left are only
        # those whose worker waited for a slot (a feeder's read-ahead left dozens; a commit a
        # call costs no throughput in the journal's thread)
        self._marks[batch.batch_id] += 1
        self._sends[batch.batch_id] = await self._in_db_thread(
            self._journal.mark_sent, batch.batch_id)
        async with self._limiter:
            await self._budget_room()
            # counted before the await, so no other worker overspends, and journalled with the
            # next commit, so a kill -9 does not lose the calls in flight; taken back when the
            # request never left (no connection, no token): such a call costs no credit
            self.counters.calls += 1
            self._journal.count(calls=1, credits=1)
            url, body = build_request(self._api_domain(), batch.module, batch.record_ids,
                                      batch.cadence_ids)
            parsed = self._urls.get(url)
            if parsed is None:
                parsed = self._urls[url] = httpx.URL(url)
            # built here, not by client.post: merging the client's base URL, headers, cookies and
            # timeouts into every call is event-loop time the call does not need
            request = httpx.Request("POST", parsed, content=encode_body(body),
                                    headers=self._headers, extensions=self._extensions)
            sent_at, clock = time.time(), time.monotonic()
            self._maybe_applied[batch.batch_id] += 1  # until an answer says otherwise
            self._leaving += 1
            try:
                response = await self._client.send(request, stream=True)
                if response.history:  # answered INVALID_TOKEN, sent again with a fresh token:
                    again = len(response.history)  # each answered call reached a server
                    self.counters.calls += again
                    self._journal.count(calls=again, credits=again)
                    for refused in response.history:  # and is in the log the page counts
                        self._journal.log_call(sent_at, batch.batch_id, refused.status_code,
                                               False, time.monotonic() - clock)
                try:
                    content = await read_answer(response)
                finally:
                    await response.aclose()
            except Exception as exc:
                if refused := getattr(exc, "refused_calls", 0):
                    # answered INVALID_TOKEN (once, or again with a fresh token) and no token
                    # to send it with: refused outright, nothing done; each send was a call
                    self.counters.calls += refused - 1
                    self._journal.count(calls=refused - 1, credits=refused - 1)
                    for _ in range(refused):  # each in the log, as each is counted
                        self._journal.log_call(sent_at, batch.batch_id, 401, False,
                                               time.monotonic() - clock)
                    self._maybe_applied[batch.batch_id] -= 1
                elif is_unsent(exc):
                    self.counters.calls -= 1
                    self._journal.count(calls=-1, credits=-1)
                    self._maybe_applied[batch.batch_id] -= 1
                else:  # it reached a server: the call log keeps it, without an answer
                    self._journal.log_call(sent_at, batch.batch_id, None, False,
                                           time.monotonic() - clock)
                raise
            except asyncio.CancelledError:
                # the run stops (a signal, an abort) with the call out: counted, so logged
                # too, without an answer (the run's last commit writes both); only a kill -9
                # leaves a counted call out of the log
                self._journal.log_call(sent_at, batch.batch_id, None, False,
                                       time.monotonic() - clock)
                raise
            finally:
                self._settled()
            seconds = time.monotonic() - clock
            if response.status_code >= 400 or content is None or len(content) <= _SHORT:
                # an error may stop the job (LIMIT_EXCEEDED, NO_PERMISSION; under any status):
                # judged while the slot is held, so that no other call leaves after an answer
                # that stops them all. Such answers are short, and so cheap to judge here;
                # a long one (entries for many records) is judged once the slot is taken again
                return self._judged(batch, response, content, sent_at, seconds)
        # the worker woken by the freed slot sends its call first; this answer is read after
        await asyncio.sleep(0)
        return self._judged(batch, response, content, sent_at, seconds)

    def _judged(self, batch: Batch, response: httpx.Response, content: bytes | None,
                sent_at: float, seconds: float):
        """The answer to a call, classified and logged; raises what it means for the run (a
        429 or 5xx to retry, an abort, an expired token after its refresh)."""
        answer = redacted(self._foreign.judge(classify_answer(
            batch.record_ids, batch.cadence_ids, response.status_code, response.headers,
            content)), self._redact)
        self._journal.log_call(sent_at, batch.batch_id, response.status_code,
                               isinstance(answer, Transient) and answer.throttled, seconds)
        if isinstance(answer, Answered):
            self._journal.count(ignored_entries=answer.ignored_entries)
            return answer
        if isinstance(answer, Fatal | TokenInvalid) or (isinstance(answer, Transient)
                                                        and answer.throttled):
            self._maybe_applied[batch.batch_id] -= 1  # refused outright: nothing was done
        if isinstance(answer, Transient):
            if answer.throttled:
                self.counters.throttled += 1
                self._journal.count(throttled=1)
            raise answer.to_error()
        if isinstance(answer, Fatal):
            raise answer.to_error(batch.module, origin(response.request.url))
        if isinstance(answer, TokenInvalid):
            raise AuthError("Zoho still answers INVALID_TOKEN after a token refresh; check that "
                            "the refresh token is valid and belongs to this data centre")
        return answer


async def _supervise(feeder: asyncio.Task, workers: list[asyncio.Task],
                     halt: Callable[[AbortError], Awaitable[None]]) -> None:
    """Wait until every worker is done; the first task to fail stops the run with its error.
    The other workers first get ``_GRACE_S`` to record the answers they hold (``halt``: no
    call leaves meanwhile): an answer received is never dropped because another task broke."""
    waiting = {feeder, *workers}
    while any(not w.done() for w in workers):
        done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if exc is None:
                continue
            if not isinstance(exc, BatcherError):
                error = EngineError(f"the {task.get_name()} task failed ({type(exc).__name__}: "
                                    f"{exc}); the journal keeps every answer recorded — re-run "
                                    "the same command to resume")
                error.__cause__ = exc
                exc = error
            if isinstance(exc, AbortError):
                await halt(exc)
            if others := [w for w in workers if not w.done()]:
                await asyncio.wait(others, timeout=_GRACE_S)
            raise exc


class _Isolation:
    """What one batch's refusals without a named culprit have taught (DESIGN.md: split, cadences
    first, with a bounded number of extra calls).

    A whole-call ``INVALID_DATA``/``NOT_ALLOWED`` comes from an id Zoho refuses — a record or a
    cadence — never from a pair, so a sub-batch that was accepted clears all its ids, and a
    refused one whose ids are all cleared but one convicts that one. Splits halve the cadences
    first (few, and an unknown cadence is the usual culprit), then the records. At most
    ``budget`` extra calls: 4 × (cadences + ⌈log2 records⌉) + 2, 50 for a 100 × 5 batch; what is
    still refused then fails without a verdict on its ids.
    """

    def __init__(self, root: Batch) -> None:
        self.budget = 4 * (len(root.cadence_ids)
                           + math.ceil(math.log2(len(root.record_ids)))) + 2
        self.spent = 0
        self._good_r: set[str] = set()
        self._good_c: set[str] = set()
        self._bad_r: set[str] = set()
        self._bad_c: set[str] = set()

    def accepted(self, batch: Batch) -> None:
        self._good_r.update(batch.record_ids)
        self._good_c.update(batch.cadence_ids)

    def refused(self, batch: Batch, answer: Unlocated) -> tuple[list[PairOutcome], list[Batch]]:
        r_ids, c_ids = batch.record_ids, batch.cadence_ids
        unknown_r = [r for r in r_ids if r not in self._good_r]
        unknown_c = [c for c in c_ids if c not in self._good_c]
        if not self._bad_r.intersection(r_ids) and not self._bad_c.intersection(c_ids):
            if not unknown_r and len(unknown_c) == 1:
                self._bad_c.add(unknown_c[0])
            elif not unknown_c and len(unknown_r) == 1:
                self._bad_r.add(unknown_r[0])
        bad_r = self._bad_r.intersection(r_ids)
        bad_c = self._bad_c.intersection(c_ids)
        single = len(r_ids) * len(c_ids) == 1
        if bad_r or bad_c or single:
            failed = [PairOutcome(r, c, Status.FAILED, answer.code, answer.message,
                                  answer.http_status)
                      for r, c in batch.pairs() if single or r in bad_r or c in bad_c]
            records = tuple(r for r in r_ids if r not in bad_r)
            cadences = tuple(c for c in c_ids if c not in bad_c)
            rest = [] if single or not (records and cadences) else [
                Batch(f"{batch.batch_id}.1", batch.module, records, cadences)]
            return failed, self._spend(rest)
        if self.spent >= self.budget:
            note = (f"{answer.message}; not isolated: Zoho refused the call as a whole without "
                    f"naming the id, and {self.spent} extra calls did not find it")
            return _all(batch, Status.FAILED, answer.code, note, answer.http_status), []
        if len(c_ids) > 1 and unknown_c:
            half = len(c_ids) // 2
            parts = [(r_ids, c_ids[:half]), (r_ids, c_ids[half:])]
        else:
            half = len(r_ids) // 2
            parts = [(r_ids[:half], c_ids), (r_ids[half:], c_ids)]
        return [], self._spend([Batch(f"{batch.batch_id}.{i}", batch.module, rr, cc)
                                for i, (rr, cc) in enumerate(parts, 1)])

    def _spend(self, children: list[Batch]) -> list[Batch]:
        self.spent += len(children)
        return children


_FEED_STEP = 8  # batches the feeder reads from the journal at a time


#: while sending, what lives through the send phase (modules, the input, the plan: tens of
#: thousands of objects) is frozen: each full collection re-scanned it, stalling the event loop,
#: and so every call in flight, for tens of milliseconds. And the youngest generation's
#: threshold: each answer parses into ~1,000 short-lived containers (freed by reference counting
#: as soon as it is classified), so the default 700 started a young collection in nearly every
#: call, scanning the answer while it was still alive and promoting it to be scanned again by the
#: next older collection. Cycles are rare here (an exception's traceback); they are still
#: collected, a few thousand objects later.
_SEND_GC_THRESHOLD0 = 20_000


def _all(batch: Batch, status: Status, code: str, message: str, http_status: int | None,
         retryable: bool = False) -> list[PairOutcome]:
    return [PairOutcome(r, c, status, code, message, http_status, retryable)
            for r, c in batch.pairs()]


#: the code of a "not enrolled" that an earlier send of the call, unanswered, may have caused
AFTER_UNANSWERED_SEND = "AFTER_UNANSWERED_SEND"


def _hedge(group: OutcomeGroup) -> OutcomeGroup:
    """A re-sent call's "not enrolled" may be the work of an earlier send whose answer was lost:
    its own code, so that the counts by code tell these rows from records that were never in
    the cadence (invariant 8: without the answer, they are not claimed as un-enrolled)."""
    if group.status != Status.NOT_ENROLLED:
        return group
    return replace(group, code=AFTER_UNANSWERED_SEND, message=(
        group.message + "; " if group.message else "") +
        "an earlier attempt of this call, whose answer was lost, may have removed it")


def _names_one_of(batch: Batch, answer: Rejected) -> bool:
    """Whether a refusal's indices point into the batch (else nothing was located)."""
    return (any(i < len(batch.record_ids) for i in answer.bad_record_idx)
            or any(i < len(batch.cadence_ids) for i in answer.bad_cadence_idx))


def _reject(batch: Batch, answer: Rejected) -> tuple[list[PairOutcome], list[Batch]]:
    """Fail the pairs the API named; the rest of the batch goes back as one child."""
    bad_r = {batch.record_ids[i] for i in answer.bad_record_idx if i < len(batch.record_ids)}
    bad_c = {batch.cadence_ids[i] for i in answer.bad_cadence_idx if i < len(batch.cadence_ids)}
    failed = [PairOutcome(r, c, Status.FAILED, answer.code, answer.message, answer.http_status)
              for r, c in batch.pairs() if r in bad_r or c in bad_c]
    records = tuple(r for r in batch.record_ids if r not in bad_r)
    cadences = tuple(c for c in batch.cadence_ids if c not in bad_c)
    children = []
    if records and cadences:
        children.append(Batch(f"{batch.batch_id}.1", batch.module, records, cadences))
    return failed, children


@dataclass(frozen=True)
class _NeverSent:
    """A batch whose every attempt failed before reaching a server."""

    reason: str


def _unsent_reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TransientError) else type(exc).__name__


def _transport_failure(exc: httpx.HTTPError) -> TransientError:
    code = "TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "CONNECTION_ERROR"
    return TransientError(f"no answer from Zoho after retries: {type(exc).__name__}", code=code)
