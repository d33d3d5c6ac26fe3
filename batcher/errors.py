"""One exception tree, grouped by what the caller should do.

Every error the command line can meet derives from :class:`BatcherError` and carries the exit code
the contract gives it, so ``cli.py`` maps any of them with a single ``except``. Messages must never
contain secrets: they are printed to users and cron logs.
"""

from __future__ import annotations

import errno


class BatcherError(Exception):
    """Root of every error batcher raises on purpose."""

    exit_code = 1
    #: sends of the request it was raised for that Zoho answered INVALID_TOKEN (the call left,
    #: and was refused outright): raised by the token's refresh after them
    refused_calls = 0


class UsageError(BatcherError):
    """Bad flags, bad input file, wrong journal: nothing was sent (exit 2)."""

    exit_code = 2


class InputError(UsageError):
    """The input file cannot be used at all (no usable column, unreadable, empty)."""


class JournalError(UsageError):
    """The journal belongs to another input, contradicts it, or another run holds it."""


class AbortError(BatcherError):
    """The job stopped before finishing; re-running the same command resumes (exit 3)."""

    exit_code = 3


class Halted(AbortError):
    """``--halt-on-failures`` stopped the run: too many answers refused pairs for good."""


class AuthError(AbortError):
    """Credentials missing, refused, or a refresh failed."""

    #: raised before the request it was for could leave (no token could be had): no call
    unsent = False


class PermissionDenied(AbortError):
    """The token lacks a scope or the user a permission (OAUTH_SCOPE_MISMATCH, NO_PERMISSION)."""


class BudgetExhausted(AbortError):
    """``--max-calls`` was reached."""


class Interrupted(AbortError):
    """Ctrl-C or a termination signal."""


class ProxyRefused(AbortError):
    """The proxy from the environment asks for credentials it was not given, or refused the
    ones it was (407): no call can pass until its URL is fixed."""


class ZohoUnreachable(AbortError):
    """Zoho (or the network to it) stayed down longer than the job waits for it."""


class WaitTooLong(AbortError):
    """Zoho asked to wait (``Retry-After``) longer than the job may wait."""


class NotPlanned(AbortError):
    """The journal's job stopped before its plan was loaded: no un-enrol call was sent, and
    re-running the job's command plans and sends it."""


class JournalIOError(AbortError):
    """The journal's disk failed (full, read-only, damaged pages): nothing more can be recorded."""


class EngineError(AbortError):
    """A task of the engine crashed (a bug): the run stopped rather than wait on it."""


class MachineLimit(AbortError):
    """The machine refused, not the input nor Zoho: too many open files, no memory, no thread
    (a scheduler's ``ulimit``, a crowded host). The same command resumes once there is room."""


#: what libraries say when the process, not the file, ran out of something
#: (not EAGAIN: a socket's "resource temporarily unavailable" is the network's, not a limit)
_LIMIT_ERRNOS = {errno.ENFILE, errno.EMFILE, errno.ENOMEM}
_LIMIT_TEXTS = ("too many open files", "cannot allocate memory", "out of memory",
                "failed to launch worker thread", "can't start new thread", "bad_alloc",
                "failed to map segment", "memory allocation")


def machine_limit(exc: BaseException, doing: str = "") -> MachineLimit | None:
    """``exc`` as a :class:`MachineLimit` (``doing``: what was being done, "reading in.csv")
    when it is the machine running out of files, memory or threads; else None."""
    text = str(exc).lower()
    if not (isinstance(exc, MemoryError)
            or (isinstance(exc, OSError) and exc.errno in _LIMIT_ERRNOS)
            or any(t in text for t in _LIMIT_TEXTS)):
        return None
    what = (exc.strerror if isinstance(exc, OSError) and exc.strerror
            else str(exc).strip().splitlines()[0][:200] if str(exc).strip()
            else type(exc).__name__)
    where = f"{doing}: " if doing else ""
    return MachineLimit(f"{where}the machine ran out of room ({what}); nothing is wrong with the "
                        "job — raise the process's limits (ulimit -n, -v) or free memory, then "
                        "re-run the same command to resume")


class TransientError(BatcherError):
    """An answer worth retrying (5xx, HTML page, reset, timeout, 429). Internal to the executor."""

    def __init__(self, message: str, *, code: str = "", http_status: int | None = None,
                 retry_after: float | None = None, throttled: bool = False,
                 unsent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after
        self.throttled = throttled
        #: the un-enrol request never left (the token could not be had): not a call, no credit
        self.unsent = unsent
