"""Output streams that their reader cannot break.

A nightly job's stdout and stderr go where its scheduler put them: a pipe whose reader stops
early (``| head``), a full disk, a descriptor closed by ``2>&-``, a terminal with an ASCII or
Latin-1 locale. None of that changes what the job did, so none of it may stop the job or change
its exit code: what cannot be written is dropped, and the first error kept for one line at the
end.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TextIO

from .hostsettings import stderr_owned

#: the control characters a terminal obeys (C0 but tab and line feed, DEL, C1), as escapes;
#: and the bidirectional overrides and isolates, which make the rest of a line read backwards
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0b, 0x20), 0x7f,
                                                 *range(0x80, 0xa0))}
_CONTROL_ESCAPES.update({c: f"\\u{c:04x}" for c in (*range(0x202a, 0x202f),
                                                     *range(0x2066, 0x206a))})


def printable(text: str) -> str:
    """``text`` for a person's terminal: a control character (ESC, BEL, CR, ...) that a server's
    message, a cadence's name or an input cell carried is shown escaped (``\\x1b``) rather
    than obeyed — it would recolour, clear or rewrite the screen; line breaks and tabs stay."""
    return text.translate(_CONTROL_ESCAPES)


class Tolerant:
    """``stream`` (None: closed from the start) whose ``write`` and ``flush`` never raise.

    The first failure (``OSError``, or ``ValueError`` for a closed file) is kept in ``lost``
    and every later write is dropped; characters the stream's encoding cannot take are written
    escaped (``\\xd7``). ``own_descriptor``: for the program's own stdout and stderr — after a
    failure the descriptor is pointed at ``/dev/null``, so the interpreter's last flush of what
    is still buffered does not fail again ("Exception ignored … BrokenPipeError"). Everything
    else (``isatty``, ``encoding``, ``fileno``…) is the stream's. A host's stream may be a bare
    writer (a scheduler's log proxy with ``write`` alone): one without ``flush`` is not
    flushed, one without ``isatty`` is no terminal, and one without ``encoding`` that refuses a
    character gets it escaped as ASCII.
    """

    def __init__(self, stream: TextIO | None, *, own_descriptor: bool = False) -> None:
        self._stream = stream
        self._own = own_descriptor
        self.lost: BaseException | None = (
            None if stream is not None else OSError(errno.EBADF, "closed"))

    def write(self, text: str) -> int:
        if self.lost is None and self._stream is not None:
            try:
                try:
                    self._stream.write(text)
                except UnicodeEncodeError:
                    encoding = getattr(self._stream, "encoding", None) or "ascii"
                    self._stream.write(text.encode(encoding, "backslashreplace")
                                       .decode(encoding))
            except (OSError, ValueError) as exc:
                self._lose(exc)
        return len(text)

    def flush(self) -> None:
        flush = getattr(self._stream, "flush", None)
        if self.lost is None and flush is not None:
            try:
                flush()
            except (OSError, ValueError) as exc:
                self._lose(exc)

    def isatty(self) -> bool:
        isatty = getattr(self._stream, "isatty", None)
        try:
            return self.lost is None and isatty is not None and bool(isatty())
        except (OSError, ValueError):
            return False

    @property
    def broken_pipe(self) -> bool:
        """The reader went away (``| head``): what it did not want is not an error."""
        return isinstance(self.lost, BrokenPipeError)

    def __getattr__(self, name: str) -> Any:
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)

    def _lose(self, exc: BaseException) -> None:
        self.lost = exc
        if self._own and self._stream is not None:
            with suppress(OSError, ValueError):
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, self._stream.fileno())
                finally:
                    os.close(null)


#: the lines a Rust panic writes on stderr (the hook prints them before pyo3 raises): its
#: "thread '…' panicked at" line, the message, a backtrace if RUST_BACKTRACE asks, and its note
_PANIC_START = re.compile(r"^thread '[^\n]*' [^\n]*?panicked at ", re.M)
_PANIC_END = re.compile(r"^note: .*RUST_BACKTRACE.*\n?", re.M)


@contextmanager
def without_rust_panics() -> Iterator[None]:
    """Run the block with stderr's descriptor held back, then write what it got except a Rust
    panic's lines: a library's panic (calamine on an odd cell) is a PanicException the caller
    answers in one line of its own; the hook's text, a backtrace to a user, must not show.
    Only in a process the command line owns (:func:`~batcher.hostsettings.own_stderr`)."""
    if not stderr_owned():
        yield
        return
    with suppress(OSError, ValueError, AttributeError):
        sys.stderr.flush()
    try:
        held = tempfile.TemporaryFile()  # noqa: SIM115  # closed below, past the yield
    except OSError:  # no room for it: the panic's text shows, the read goes on
        held = None
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (2>&-): nothing to hold back
        saved = None
    if held is None or saved is None:
        if held is not None:
            held.close()
        if saved is not None:
            os.close(saved)
        yield
        return
    with held:
        try:
            os.dup2(held.fileno(), 2)
            yield
        finally:
            with suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)  # what else was said meanwhile is said, the block raised or not
            _write_but_panics(held.read().decode("utf-8", "replace"))


def _write_but_panics(text: str) -> None:
    while (start := _PANIC_START.search(text)) is not None:
        end = _PANIC_END.search(text, start.end())
        text = text[:start.start()].rstrip("\n") + ("\n" if start.start() else "") + (
            text[end.end():] if end else "")
    if text.strip():
        with suppress(OSError, ValueError, AttributeError):
            sys.stderr.write(text)
            sys.stderr.flush()
