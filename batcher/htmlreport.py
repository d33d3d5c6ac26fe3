"""``<stem>.report.html``: a job on one self-contained page, beside its results.

The page is rendered from ``templates/report.html.j2`` with autoescape on — every text that came
from the server or the input (messages, ids, cadence names) is escaped, so a message holding
``<script>`` shows as text. It has inline CSS and SVG only: no script, no font or image from the
network; it reads on a laptop and prints.

Everything on it is an aggregate, never one HTML row per input row. What it says of the rows comes
from the summary (per status, code and cadence, counted as the rows are written) and, for the top
error messages, from a :class:`Tally`, which groups the failed and invalid rows while
:func:`~batcher.report.write_results` reads them for the results, with Arrow's hash grouping chunk
by chunk: a GROUP BY of the journal's rows table sorts every row, about 2 s of CPU a million. The
batches and the call log are small tables, queried through a read-only connection of the report's
own.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import JournalIOError
from .journal import Journal
from .models import Status
from .readonly import connect_read_only
from .report import ResultSource, Summary, _atomic, _remove_stale_temps, unknown_calls_line
from .rowstore import CHUNK_ROWS
from .streams import printable

if TYPE_CHECKING:  # imported where the page is made: not on the way to a job's first call
    import jinja2

#: the report's name beside the results: ``out/job.csv`` → ``out/job.report.html``
REPORT_SUFFIX = ".report.html"
_BUCKETS = 120  # timeline bars at most: readable, and a fixed size whatever the job's length
_TOP_BATCHES = 5
_TOP_ERRORS = 10
_EXAMPLES = 3
#: distinct messages a tally follows; the rows of later ones are only counted (memory bound)
_MAX_MESSAGES = 10_000
_TOP_CODES = 15
_CADENCE_ROWS = 300  # larger orgs: the rest is summed in one line
_BAR_W = 360  # SVG units of the longest bar of a bar chart

_EXIT_MEANING = {
    0: "every row ended unenrolled, not_enrolled, scheduled or duplicate",
    1: "the job finished but some rows are failed or invalid (see the results)",
    2: "usage or input error; nothing was sent",
    3: "aborted or unfinished: re-run the same command to resume",
}
#: the per-cadence table's status columns; the other statuses are summed as "other"
_CADENCE_COLUMNS = (Status.UNENROLLED, Status.NOT_ENROLLED, Status.FAILED, Status.INVALID)
_BAD = pa.array([Status.FAILED.value, Status.INVALID.value])
_EXAMPLE_COLUMNS = ["row", "module", "record_id", "cadence_id"]


def report_path(results_path: str | os.PathLike[str]) -> Path:
    """Where a job's report goes: ``<results stem>.report.html`` beside the results."""
    p = Path(results_path)
    return p.with_name(p.stem + REPORT_SUFFIX)


@dataclass
class Counts:
    """The failed and invalid rows a pass over the results counted, by reason (the other
    counts come from the summary, counted as the rows were written).

    ``errors``: {(status, code, message): [rows, examples]}, the message with its quoted
    values and long numbers masked (``…``), so the rows of one reason group together;
    ``examples`` are the first ``_EXAMPLES`` rows as {row, module, record_id, cadence_id}.
    ``untracked``: failed or invalid rows whose message came after the first
    ``_MAX_MESSAGES`` distinct ones (counted, not grouped).
    """

    errors: dict[tuple[str, str | None, str | None], list[Any]] = field(default_factory=dict)
    untracked: int = 0

    def add(self, chunk: pa.Table) -> None:
        """Count one chunk of results rows (:data:`~batcher.journal.RESULT_SCHEMA` columns)."""
        bad = chunk.filter(pc.is_in(chunk["status"], value_set=_BAD))
        if bad.num_rows:
            self._add_errors(bad)

    def _add_errors(self, bad: pa.Table) -> None:
        keyed = pa.table({"status": bad["status"], "code": bad["code"],
                          "message": _mask(bad["message"]),
                          "i": np.arange(bad.num_rows)})
        grouped = keyed.group_by(["status", "code", "message"], use_threads=False).aggregate(
            [("i", "list")])
        firsts = pc.list_slice(grouped["i_list"], 0, _EXAMPLES).to_pylist()
        sizes = pc.list_value_length(grouped["i_list"]).to_pylist()
        wanted: list[tuple[list[Any], int]] = []  # (group entry, row index in ``bad``)
        for status, code, message, n, first in zip(
                *(grouped.column(c).to_pylist() for c in ("status", "code", "message")),
                sizes, firsts, strict=True):
            entry = self.errors.get((status, code, message))
            if entry is None:
                if len(self.errors) >= _MAX_MESSAGES:
                    self.untracked += n
                    continue
                entry = self.errors[(status, code, message)] = [0, []]
            entry[0] += n
            wanted += [(entry, i) for i in first[:_EXAMPLES - len(entry[1])]]
        if wanted:
            rows = bad.select(_EXAMPLE_COLUMNS).take([i for _, i in wanted]).to_pylist()
            for (entry, _), row in zip(wanted, rows, strict=True):
                entry[1].append(row)

    def top_errors(self) -> list[dict[str, Any]]:
        """The ``_TOP_ERRORS`` largest groups, most rows first: [{status, code, message, rows,
        examples}]."""
        top = sorted(self.errors.items(), key=lambda kv: (-kv[1][0], kv[1][1][0]["row"]))
        return [{"status": s, "code": c, "message": m, "rows": n, "examples": examples}
                for (s, c, m), (n, examples) in top[:_TOP_ERRORS]]


def _mask(messages: pa.ChunkedArray) -> pa.Array:
    """Messages with their quoted values (``'12ab'``) and ids (6 digits or more) as ``…``;
    each distinct message is masked once (a job's messages repeat)."""
    encoded = pc.dictionary_encode(messages.combine_chunks())
    masked = pc.replace_substring_regex(encoded.dictionary, r"'[^']*'|\b\d{6,}\b", "…")
    return pc.take(masked, encoded.indices)


class Tally:
    """A results source that counts (:class:`Counts`) as it is read.

    Give it to ``write_results`` in place of the journal (or ``UnplannedResults``), then to
    :func:`write_report`: the counting rides on the pass that writes the results. ``counts`` is
    valid once a pass has run to its end (``complete``); a new pass counts afresh.
    """

    def __init__(self, source: ResultSource) -> None:
        self.source = source
        self.counts = Counts()
        self.complete = False

    @property
    def rows(self) -> int:
        return self.source.rows

    @property
    def started_at(self) -> str:
        return self.source.started_at

    def counters(self) -> dict[str, int]:
        return self.source.counters()

    def iter_result_chunks(self, chunk_rows: int = CHUNK_ROWS,
                           until: threading.Event | None = None) -> Iterator[pa.Table]:
        counts, self.complete = Counts(), False
        for chunk in self.source.iter_result_chunks(chunk_rows, until=until):
            counts.add(chunk)
            yield chunk
        self.counts, self.complete = counts, True


def write_report(source: ResultSource, summary: Summary, path: str | os.PathLike[str], *,
                 command: str, exit_code: int | None = None) -> Path:
    """Write the report of a job atomically, mode 0600; returns its absolute path.

    ``source``: what the results were written from — best the :class:`Tally` that
    ``write_results`` read (else the rows are read once more here: seconds per million). Its
    source is a :class:`Journal` (every section) or one without (``UnplannedResults``: no
    batches, no calls). ``command``: the command to run next (resume the job, or send its retry
    file), shown verbatim. ``exit_code``: the job's, when the caller knows it; else derived from
    the summary (3 when aborted or rows are left ``not_sent``). Raises ``OSError`` when the page
    cannot be written and ``JournalIOError`` when the journal cannot be read; the results are
    never touched.
    """
    tally = source if isinstance(source, Tally) and source.complete else _counted(source)
    journal = tally.source if isinstance(tally.source, Journal) else None
    names = (journal.get_meta("cadence_names", {}) or {}) if journal else {}
    facts = _read_journal(journal) if journal else None
    # a server's or an input's control characters shown, not obeyed: a right-to-left override
    # in a message would show the rest of its line reversed (the template holds none)
    html = printable(_template().render(_view(summary, tally.counts, names, facts, command,
                                              exit_code)))
    target = Path(os.path.abspath(path))
    _remove_stale_temps(target)
    with _atomic(target) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(html)
    return target


def _counted(source: ResultSource) -> Tally:
    """A tally of a source no results pass counted: one pass of its own."""
    tally = Tally(source.source if isinstance(source, Tally) else source)
    for _ in tally.iter_result_chunks():
        pass
    return tally


def prepare() -> None:
    """Ready, ahead of a job's end, what writing its results and page loads on first use: the
    page's compiled template and Arrow's grouping engine (a tenth of a second each, else spent
    after the last answer). Best effort, for a background thread: a failure here is met, and
    reported, where the page is written."""
    with contextlib.suppress(Exception):
        import pyarrow.acero  # noqa: F401  (Table.group_by's engine)

        _template()


@functools.cache
def _template() -> jinja2.Template:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("batcher", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda n: "—" if n is None else f"{n:,}"
    return env.get_template("report.html.j2")


# ---------------------------------------------------------------------- the per-cadence table


def _cadence_table(summary: Summary, names: dict[str, Any]) -> dict[str, Any]:
    """{lines, total, rest}: one line per (module, cadence) of the summary's ``by_cadence``
    (largest first), at most ``_CADENCE_ROWS``; ``rest`` sums the others, the summary's
    ``other_cadences`` included (None when there are none).

    A line is {module, cadence_id, name, pairs, <status>: rows..., other}; rows without a
    cadence (invalid input) have ``cadence_id`` None.
    """
    ordered = [_counted_line(c["module"], c["cadence_id"], c["rows"], c["by_status"], names)
               for c in summary.by_cadence]
    rest, count = ordered[_CADENCE_ROWS:], max(0, len(ordered) - _CADENCE_ROWS)
    other = summary.other_cadences
    if other:  # the cadences the summary itself summed
        rest.append(_counted_line(None, None, other["rows"], other["by_status"], {}))
        count += other["cadences"]
    return {"lines": ordered[:_CADENCE_ROWS], "total": _sum_lines(ordered[:_CADENCE_ROWS] + rest),
            "rest": _sum_lines(rest) | {"count": count} if rest else None}


def _counted_line(module: str | None, cadence: str | None, rows: int,
                  by_status: dict[str, int], names: dict[str, Any]) -> dict[str, Any]:
    line = _cadence_line(module, cadence, names)
    line["pairs"] = rows
    for status, n in by_status.items():
        line[status if status in _CADENCE_COLUMNS else "other"] += n
    return line


def _cadence_line(module: str | None, cadence: str | None, names: dict[str, Any]
                  ) -> dict[str, Any]:
    name = names.get(cadence) if cadence else None
    return {"module": module, "cadence_id": cadence, "name": str(name) if name else None,
            "pairs": 0, "other": 0, **{s.value: 0 for s in _CADENCE_COLUMNS}}


def _sum_lines(lines: list[dict[str, Any]]) -> dict[str, int]:
    keys = ("pairs", "other", *(s.value for s in _CADENCE_COLUMNS))
    return {k: sum(line[k] for line in lines) for k in keys}


# ---------------------------------------------------------------------- what the journal says


@dataclass
class _Facts:
    """The journal's batches and calls, each list already cut to what the page shows."""

    retried: list[dict[str, Any]]
    slowest: list[dict[str, Any]]
    per_second: list[tuple[int, int, int]]
    lower_bound: int | None
    lowest_concurrency: int | None


def _read_journal(journal: Journal) -> _Facts:
    with _reader(journal) as db:
        return _Facts(retried=_most_retried(db), slowest=_slowest(db),
                      per_second=journal.calls_per_second(),
                      lower_bound=journal.get_meta("lower_bound"),
                      lowest_concurrency=journal.get_meta("lowest_concurrency"))


@contextmanager
def _reader(journal: Journal) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the journal (WAL: it sees every commit of the writer); one
    opened to read is read as it was opened (immutable where it lies read-only)."""
    try:
        with closing(connect_read_only(journal.path, nobody_writes=journal.read_only)) as db:
            yield db
    except sqlite3.Error as exc:
        raise JournalIOError(f"journal {journal.path}: cannot read it for the report "
                             f"({exc})") from None


def _most_retried(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Batches sent more than once, most attempts first: [{batch_id, module, pairs, attempts,
    state}]. A batch's ``attempts`` are recorded with its answer, so a batch still open when
    its run stopped (429s, 5xx, a signal) has none: its calls in the log count for it."""
    return [dict(zip(("batch_id", "module", "pairs", "attempts", "state"), r, strict=True))
            for r in db.execute(
                "SELECT b.batch_id, b.module, b.npairs, max(b.attempts, coalesce(c.n, 0)) AS tries,"
                " b.state FROM batches b LEFT JOIN (SELECT batch_id, count(*) AS n FROM calls"
                " GROUP BY batch_id) c ON c.batch_id = b.batch_id WHERE tries > 1"
                " ORDER BY tries DESC, b.seq LIMIT ?", (_TOP_BATCHES,))]


def _slowest(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Batches whose slowest call took longest, from the call log: [{batch_id, calls,
    slowest_s, total_s, answers}] (``answers``: the HTTP statuses seen, "-" for none)."""
    return [{"batch_id": b, "calls": n, "slowest_s": mx, "total_s": total, "answers": answers}
            for b, n, mx, total, answers in db.execute(
                "SELECT batch_id, count(*), max(seconds) AS mx, sum(seconds),"
                " group_concat(DISTINCT coalesce(http_status, '-')) FROM calls"
                " GROUP BY batch_id ORDER BY mx DESC LIMIT ?", (_TOP_BATCHES,))]


# ---------------------------------------------------------------------- the page's view


def _view(summary: Summary, counts: Counts, names: dict[str, Any], facts: _Facts | None,
          command: str, exit_code: int | None) -> dict[str, Any]:
    code = _exit_code(summary) if exit_code is None else exit_code
    lowest = summary.extra.get("lowest_concurrency")
    if lowest is None and facts is not None:
        lowest = facts.lowest_concurrency
    return {
        "s": summary, "exit_code": code, "exit_meaning": _EXIT_MEANING.get(code, "unknown"),
        "lower_bound": facts.lower_bound if facts else None, "lowest_concurrency": lowest,
        "duration": _duration(summary.duration_s),
        "run_duration": _duration(summary.run_duration_s or 0.0), "ended": _ended(summary, code),
        "status_bars": _bars([(f"status.{s}", s, n) for s, n in _by_status(summary) if n]),
        "code_bars": _bars(_by_code(summary)),
        "cadences": _cadence_table(summary, names), "errors": counts.top_errors(),
        "untracked": counts.untracked, "facts": facts,
        "timeline": _timeline(facts.per_second) if facts else None,
        "command": command, "next": _next_step(summary),
        "unknown_calls": unknown_calls_line(summary),
    }


def _ended(summary: Summary, exit_code: int) -> str:
    """How the job's last run ended, and when: a job that stopped unfinished (exit 3) is not
    "finished", and a run killed before recording its end has no end to show."""
    if summary.finished_at is None:
        return "its last run never recorded its end"
    return f"{'stopped' if exit_code == 3 else 'finished'} {summary.finished_at}"


def _exit_code(summary: Summary) -> int:
    """The job's exit code as far as its summary tells (``job`` knows it better)."""
    dry_run = summary.extra.get("dry_run")
    if summary.extra.get("aborted") or (summary.by_status.get(Status.NOT_SENT) and not dry_run):
        return 3
    if dry_run:
        return 1 if summary.by_status.get(Status.INVALID) else 0
    return summary.exit_code()


def _by_status(summary: Summary) -> list[tuple[str, int]]:
    known = [(s.value, summary.by_status.get(s.value, 0)) for s in Status]
    return known + sorted((s, n) for s, n in summary.by_status.items()
                          if s not in {k for k, _ in known})


def _by_code(summary: Summary) -> list[tuple[str, str, int]]:
    """(metric, "status code", rows), most rows first; past ``_TOP_CODES`` summed as "other
    codes"."""
    items = sorted(((f"code.{s}.{c}", f"{s} {c}", n) for s, codes in summary.by_code.items()
                    for c, n in codes.items()), key=lambda x: (-x[2], x[1]))
    rest = sum(n for _, _, n in items[_TOP_CODES:])
    return items[:_TOP_CODES] + ([("code.other", "other codes", rest)] if rest else [])


def _bars(items: list[tuple[str, str, int]]) -> dict[str, Any]:
    """A horizontal bar chart's layout from (metric, label, n): {width, label_w, height, bars:
    [{metric, label, key, n, y, width}]} in SVG units (row pitch 24, labels ~7 units a
    character); ``key`` is the label's first word (a status), for its colour."""
    top = max((n for _, _, n in items), default=0) or 1
    label_w = min(300, 7 * max((len(label) for _, label, _ in items), default=0) + 8)
    bars = [{"metric": metric, "label": label, "key": label.split(" ", 1)[0], "n": n,
             "y": 24 * i, "width": max(1.0, round(_BAR_W * n / top, 1)) if n else 0.0}
            for i, (metric, label, n) in enumerate(items)]
    return {"width": label_w + _BAR_W + 100, "label_w": label_w, "height": 24 * len(bars),
            "bars": bars}


def _timeline(per_second: list[tuple[int, int, int]]) -> dict[str, Any] | None:
    """Calls per second and 429s over time, in at most ``_BUCKETS`` bars of equal seconds:
    {bucket_s, start, end, peak, bars: [{x, w, h, h429, at, rate, throttled}]} (x, w, h in SVG
    units of a 1000 × 150 plot; rate in calls per second). None without any call logged."""
    if not per_second:
        return None
    first, last = per_second[0][0], per_second[-1][0]
    bucket = max(1, math.ceil((last - first + 1) / _BUCKETS))
    n = (last - first) // bucket + 1
    calls, throttled = [0] * n, [0] * n
    for second, c, t in per_second:
        calls[(second - first) // bucket] += c
        throttled[(second - first) // bucket] += t
    peak = max(calls) / bucket
    w = 1000 / n
    bars = [{"x": round(i * w, 2), "w": round(max(w - 1, 0.5), 2),
             "h": round(150 * calls[i] / bucket / peak, 1),
             "h429": round(150 * throttled[i] / bucket / peak, 1),
             "at": _clock(first + i * bucket), "rate": round(calls[i] / bucket, 2),
             "throttled": throttled[i]} for i in range(n)]
    return {"bucket_s": bucket, "start": _clock(first, date=True),
            "end": _clock(last + 1, date=True), "peak": round(peak, 2), "bars": bars,
            "calls": sum(calls), "throttled": sum(throttled)}


def _clock(unix: float, date: bool = False) -> str:
    fmt = "%Y-%m-%d %H:%M:%S UTC" if date else "%H:%M:%S"
    return datetime.fromtimestamp(unix, UTC).strftime(fmt)


def _duration(seconds: float) -> str:
    """``12.3 s``, or ``1 h 02 min 05 s`` past a minute."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def _next_step(summary: Summary) -> str:
    """What the next command does, in a phrase."""
    left = summary.by_status.get(Status.NOT_SENT, 0)
    if left and summary.extra.get("dry_run"):  # no job to resume: the real one, from the start
        return f"runs the real job: sends the {left:,} rows this dry run planned"
    if left:
        return f"sends the {left:,} rows not sent yet (resumes the job)"
    if summary.retry_rows:
        return (f"sends again the {summary.retry_rows:,} rows that failed for a reason worth "
                "retrying")
    return "nothing is left to send; the job's command"
