"""Reading a journal without writing it: `batcher status`, and `batcher report` of a journal in
a place it cannot write (an archive copy, a read-only mount, ``chmod a-w``).

SQLite opens a WAL-mode file read-only (``mode=ro``) only when it can make the ``-shm`` file
beside it, or finds it there; in a read-only folder a journal its last run closed cleanly has
neither, and ``mode=ro`` says "unable to open database file". Such a file is read as immutable
(``immutable=1``: no locks, no ``-shm``) — only when the caller knows no run writes it meanwhile,
and only when no ``-wal`` file holds answers the file itself lacks (immutable would not see them).

Kept apart from :mod:`batcher.journal` so `batcher status` reads without loading pyarrow.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .errors import JournalError


def connect_read_only(path: Path, *, nobody_writes: bool) -> sqlite3.Connection:
    """A read-only connection to the journal at ``path`` (autocommit; usable from any thread).

    ``nobody_writes``: no run holds the journal and none can start while it is read (its lock
    is held shared, or the place cannot be written); only then may it be read as immutable.
    Raises ``sqlite3.Error`` as SQLite does (``SQLITE_NOTADB`` for a file that is no database),
    and :class:`~batcher.errors.JournalError` (exit 2) for a journal whose ``-wal`` file holds
    answers that cannot be read where it lies.
    """
    uri = path.resolve().as_uri()
    db = _connect(uri + "?mode=ro")
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # where mode=ro fails
        return db
    except sqlite3.Error as exc:
        db.close()
        if not nobody_writes or getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN":
            raise
    try:
        unwritten = os.stat(f"{path}-wal").st_size > 0
    except OSError:
        unwritten = False
    if unwritten:
        raise JournalError(
            f"cannot read journal {path} where it is: its {path.name}-wal file holds answers not "
            "yet written into the journal, and SQLite cannot read them in a place it cannot "
            "write; copy the journal with its -wal file into a folder you can write, and give "
            "that copy with --journal")
    return _connect(uri + "?mode=ro&immutable=1")


def _connect(uri: str) -> sqlite3.Connection:
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
