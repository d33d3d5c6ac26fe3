"""Rows per result status, counted in SQL on a journal's tables, without reading its rows.

Kept apart from :mod:`batcher.journal` so `batcher status` can count without loading pyarrow.
A planned pair's status is its own row in ``outcomes`` when it has one, else its planned batch's
outcome (``not_sent`` until that batch is answered); the reader's invalid and duplicate rows are
counted once, at load.
"""

from __future__ import annotations

import json
import sqlite3

#: the journal's format: 4 coded rows (ids as integers), 3 rows as text, 2 one SQLite row a pair
SCHEMA_VERSION = 4
#: meta key of the reader's statuses (valid / invalid / duplicate → rows), written at load
STORED_STATUSES = "batcher.stored_statuses"

_BATCH_STATUS = "coalesce(CASE WHEN b.state = 'answered' THEN b.status END, 'not_sent')"
_TERMS = (
    (f"SELECT {_BATCH_STATUS}, sum(b.npairs) FROM batches b WHERE b.parent IS NULL GROUP BY 1", 1),
    (f"SELECT {_BATCH_STATUS}, count(*) FROM outcomes o JOIN batches b ON b.seq = o.root"
     " GROUP BY 1", -1),
    ("SELECT status, count(*) FROM outcomes GROUP BY 1", 1),
)


def status_counts(db: sqlite3.Connection) -> dict[str, int]:
    """Result status → rows, statuses without rows left out. Run inside one transaction for a
    consistent snapshot."""
    got = db.execute("SELECT value FROM meta WHERE key = ?", (STORED_STATUSES,)).fetchone()
    counts = {k: v for k, v in (json.loads(got[0]) if got else {}).items() if k != "valid"}
    for sql, sign in _TERMS:
        for status, n in db.execute(sql):
            counts[status] = counts.get(status, 0) + sign * n
    return {k: v for k, v in counts.items() if v}


def unknown_calls_text(calls: int, unknown: int) -> str | None:
    """What ``unknown`` of a job's ``calls``, counted as they left and never logged (a run
    killed with them in flight), mean; said once, the same in the summary, the page and
    `batcher status`. None when there are none."""
    if not unknown:
        return None
    return (f"{unknown} of the {calls} calls were in flight when a run was killed: their "
            f"answer was never recorded, so whether Zoho applied them is unknown (their pairs "
            f"are sent again, or said to be in doubt); the call log and its timeline hold the "
            f"other {calls - unknown}")
