"""Plain data shared by every layer: statuses, batches, per-pair outcomes, result columns.

IDs are ``str`` everywhere: Zoho ids exceed 2**53 and a float anywhere corrupts them.
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import UsageError


class Status(StrEnum):
    UNENROLLED = "unenrolled"
    NOT_ENROLLED = "not_enrolled"
    SCHEDULED = "scheduled"
    FAILED = "failed"
    INVALID = "invalid"
    DUPLICATE = "duplicate"
    NOT_SENT = "not_sent"


#: statuses that make exit code 0 when every row has one of them
SUCCESS_STATUSES = frozenset(
    {Status.UNENROLLED, Status.NOT_ENROLLED, Status.SCHEDULED, Status.DUPLICATE}
)

#: the results file's columns, in order (DESIGN.md §2 Results)
RESULT_COLUMNS = (
    "row", "module", "record_id", "cadence_id", "status", "code", "message",
    "http_status", "attempts", "batch_id", "retryable", "finished_at",
)

MAX_CADENCES_PER_CALL = 5
MAX_RECORDS_PER_CALL = 100


@dataclass(frozen=True, slots=True)
class Batch:
    """One un-enrol call: every record × every cadence of it was asked for."""

    batch_id: str
    module: str
    record_ids: tuple[str, ...]
    cadence_ids: tuple[str, ...]

    def pairs(self) -> list[tuple[str, str]]:
        return [(r, c) for r in self.record_ids for c in self.cadence_ids]


@dataclass(frozen=True, slots=True)
class BatchBlock:
    """Consecutive batches of one module as columns (the planner's output for the journal).

    Batch ``i`` is ``batch_ids[i]``: records ``record_ids[offsets[i]:offsets[i + 1]]`` (an Arrow
    array of strings, or of uint64 ids: their text is the number's; ``offsets`` a numpy array of
    ``len(batch_ids) + 1``) × ``cadence_ids[i]``.
    """

    module: str
    batch_ids: list[str]
    offsets: Any
    record_ids: Any
    cadence_ids: list[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class PairOutcome:
    """The final word on one (record, cadence) pair of a batch."""

    record_id: str
    cadence_id: str
    status: Status
    code: str = ""
    message: str = ""
    http_status: int | None = None
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class OutcomeGroup:
    """One result shared by every pair of ``record_ids`` × ``cadence_ids`` of a batch.

    An answer as a few groups instead of one object per pair: the usual answer (every record
    removed from every cadence) is a single group, read and stored without per-pair work.
    """

    record_ids: tuple[str, ...]
    cadence_ids: tuple[str, ...]
    status: Status
    code: str = ""
    message: str = ""
    http_status: int | None = None
    retryable: bool = False

    @property
    def size(self) -> int:
        return len(self.record_ids) * len(self.cadence_ids)

    def outcomes(self) -> list[PairOutcome]:
        return [PairOutcome(r, c, self.status, self.code, self.message, self.http_status,
                            self.retryable) for r in self.record_ids for c in self.cadence_ids]


def with_date(path: str | os.PathLike[str], now: datetime | None = None, flag: str = "") -> str:
    """``path`` with ``{date}`` as today's UTC date (YYYY-MM-DD): a nightly job's results and
    journal, as ``run`` names them and ``status`` and ``report`` find them. UsageError for any
    other ``{…}`` (``{DATE}``, ``{time}``): taken as it is, a nightly recipe's typo would name
    one file every night. ``flag``: the option that gave the path, for the message."""
    text = str(path)
    if brace := re.search(r"\{[^{}]*\}", text.replace("{date}", "")):
        raise UsageError(f"{flag + ' ' if flag else ''}{text}: {brace.group()} is not filled "
                         "in; {date} is the one placeholder (today's UTC date, YYYY-MM-DD)")
    return text.replace("{date}", (now or datetime.now(UTC)).strftime("%Y-%m-%d"))


def where_journals_are(path: Path) -> str:
    """What to give as ``--journal`` instead of ``path``, which is no journal: the journal of
    the results it names, else the journals in its folder, else where a run puts one."""
    beside = path.with_suffix(".journal") if path.name else path
    if path.suffix != ".journal" and beside.is_file():
        return f"; that is a job's results: its journal is {beside}"
    with suppress(OSError):
        found = sorted((p for p in path.parent.glob("*.journal") if p.is_file()),
                       key=lambda p: -p.stat().st_mtime)
        if found:
            more = ", …" if len(found) > 5 else ""
            return (f"; journals in {path.parent}, newest first: "
                    f"{', '.join(p.name for p in found[:5])}{more}")
    return "; a run writes its journal beside its results, as <results stem>.journal"


def utc_at(unix_s: float) -> str:
    """Unix seconds as the journal writes a time: UTC, ISO 8601, milliseconds, ``Z``."""
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def pasted(path: str | os.PathLike[str]) -> str:
    """A path for a command the user pastes: absolute, so it names the same file from any
    folder (a report opened elsewhere, a new terminal) and never reads as a flag (``-x.csv``)."""
    return str(Path(path).absolute())
