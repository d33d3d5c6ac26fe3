"""A job's lines on stderr, through the stdlib's ``logging``: ``batcher: ...`` text for people,
or one JSON object per line (``--log-format json``: event, ts, message and fields) for a
scheduler's log collector. Each job has a logger of its own, outside the logging hierarchy
(nothing propagates to a host's handlers, and nothing is left in the logging registry after the
job), so a host application's logging is neither used nor disturbed. A stream that fails (a
reader gone, a full disk) loses the lines; the job goes on."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, TextIO

from .errors import UsageError
from .progress import Phases
from .streams import Tolerant, printable

LOG_FORMATS = ("text", "json")


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = printable(record.getMessage())  # a server's text may hold ESC sequences
        return message if getattr(record, "bare", False) else f"batcher: {message}"


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"event": getattr(record, "event", "message"),
               "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "message": record.getMessage(), **getattr(record, "fields", {})}
        # ASCII: a line stays JSON whatever the stream can encode (a latin-1 or ASCII locale
        # would escape "×" as "\xd7", which no JSON parser takes)
        return json.dumps(doc, default=str)


class JobLog:
    """``say(event, message, **fields)``: one line. ``quiet`` keeps only what ``always`` marks
    (why a job aborted). ``json`` tells whether lines are JSON objects."""

    def __init__(self, stream: TextIO, fmt: str = "text", quiet: bool = False) -> None:
        if fmt not in LOG_FORMATS:
            raise UsageError(f"log format {fmt!r}: choose one of {', '.join(LOG_FORMATS)}")
        stream = stream if isinstance(stream, Tolerant) else Tolerant(stream)
        self.stream, self.json, self.quiet = stream, fmt == "json", quiet
        # made directly, not by getLogger: one per job, and none kept by the registry after it
        self._logger = logging.Logger("batcher.job", logging.INFO)
        self._logger.propagate = False
        self._handler = logging.StreamHandler(stream)
        self._handler.setFormatter(_Json() if self.json else _Text())
        self._logger.addHandler(self._handler)
        #: ``with log.phase("planning 9,600,000 pairs", "plan"):`` times a long step
        self.phase = Phases(stream=stream, enabled=not quiet, emit=(
            lambda line, fields: self.say("phase", line, **fields)) if self.json else None)

    def say(self, event: str, message: str, *, always: bool = False, bare: bool = False,
            json_only: bool = False, **fields: Any) -> None:
        """``bare``: in text, the message as it is (a summary block), without ``batcher:``;
        ``json_only``: a line only a log collector needs (a job's start)."""
        if (self.quiet and not always) or (json_only and not self.json):
            return
        self._logger.info("%s", message, extra={"event": event, "fields": fields, "bare": bare})

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
