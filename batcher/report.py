"""Results, retry file and summary from a journal, written atomically and streamed chunk by chunk.

The three files are first written to hidden temporary files in the target directory and renamed
into place only when all of them are complete, so a user (or cron) never sees a truncated results
file, and a failed write leaves the previous run's files untouched. They are created with mode
0600 (they hold the job's record ids), and the temporary files a killed run left are removed.
Counts are taken from the rows actually written, then reconciled against the number of input rows
the journal loaded.

Results are CSV, Parquet or ``.xlsx`` by their extension. Text meant for a spreadsheet (CSV and
xlsx results) is defused: a cell that starts with ``=``, ``+``, ``-``, ``@``, tab or CR gets a
leading ``'`` so that no spreadsheet evaluates it; Parquet, read by programs, stays raw, and so
does the retry CSV, an input for the next run that must give back the values it was given.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shlex
import shutil
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .arrays import arrow_of, numpy_of
from .counts import unknown_calls_text
from .errors import InputError, UsageError
from .inputs.carry import Carried
from .inputs.columns import _ALIASES, _normalise_header
from .inputs.records import UNREAD
from .journal import utc_now
from .models import SUCCESS_STATUSES, Status, pasted
from .rowstore import CHUNK_ROWS, RESULT_SCHEMA

RETRY_COLUMNS = ("module", "record_id", "cadence_id")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CHUNKS_AHEAD = 3  # chunks of results read ahead of the slower of the two writers
#: bytes of carried columns written at once: a results chunk beside long notes or hundreds of
#: columns is cut into pieces of about this size, so memory stays flat whatever a row holds
CARRY_BYTES = 1 << 26
#: the extensions ``--results`` may have
RESULT_SUFFIXES = (".csv", *_PARQUET_SUFFIXES, ".xlsx")
#: data rows an .xlsx sheet holds under its header (1,048,576 rows in all)
XLSX_MAX_ROWS = 1_048_575
#: the characters (UTF-16 units) an .xlsx cell holds
XLSX_CELL_MAX = 32_767
#: the columns an .xlsx sheet holds (A to XFD); xlsxwriter drops cells past them
XLSX_MAX_COLUMNS = 16_384
#: the results file's own columns: the journal's, with the cadence's name after its id; the
#: input's other columns follow them
OUTPUT_SCHEMA = RESULT_SCHEMA.insert(RESULT_SCHEMA.get_field_index("cadence_id") + 1,
                                     pa.field("cadence_name", pa.string()))
_STATUS_ORDER = [s.value for s in Status]
#: a text that a spreadsheet would take for a formula (or a DDE call) and its defused form
_FORMULA_START, _DEFUSED = r"^([=+\-@\t\r])", r"'\1"
#: the first bytes that :data:`_FORMULA_START` matches, as a lookup table
_FORMULA_BYTES = np.zeros(256, dtype=bool)
_FORMULA_BYTES[[ord(c) for c in "=+-@\t\r"]] = True


class NOW:
    """``write_results(finished_at=NOW)``: the run ends as its summary is written."""


class ResultSource(Protocol):
    """What :func:`write_results` needs from a journal."""

    rows: int
    started_at: str

    def iter_result_chunks(self, chunk_rows: int = ...,
                           until: threading.Event | None = None) -> Iterator[pa.Table]: ...

    def counters(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Summary:
    rows: int
    by_status: dict[str, int]
    #: status → code → rows, for rows that carry a code
    by_code: dict[str, dict[str, int]]
    calls: int
    retries: int
    throttled: int
    credits: int
    duration_s: float
    results_path: str
    retry_path: str
    summary_path: str
    retry_rows: int
    reconcile: str
    reconciled: bool
    started_at: str | None = None
    #: answer entries that named a record or cadence the call did not hold (never evidence)
    ignored_entries: int = 0
    #: all-empty input rows: not data rows, no results row (``rows`` does not count them)
    blank: int = 0
    #: [{module, cadence_id, rows, by_status}], most rows first (cadence_id None: rows that
    #: name no cadence), at most BY_CADENCE_MAX; the others summed in ``other_cadences``
    by_cadence: list[dict[str, Any]] = field(default_factory=list)
    #: {cadences, rows, by_status} of the cadences past ``by_cadence``'s; None when none are
    other_cadences: dict[str, Any] | None = None
    finished_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the HTML report beside the results, once it was written
    report_path: str | None = None
    #: of ``calls``, those a run killed (``kill -9``, a machine stopped) had in flight: counted
    #: as they left, never answered in its journal, so not in the call log (the page's
    #: timeline); whether Zoho applied them is unknown (their pairs are re-sent, with that doubt)
    calls_outcome_unknown: int = 0
    #: ``duration_s`` is a lower bound: a run of the job never recorded its end (it counts to
    #: its last logged call)
    duration_lower_bound: bool = False
    #: this run's own seconds (``duration_s`` is the job's, over all its runs, as ``calls``,
    #: ``credits`` and ``throttled`` are); None for ``batcher report``, which is of no run
    run_duration_s: float | None = None

    def exit_code(self) -> int:
        """0 when every row ended well, else 1 (aborts, exit 3, are the caller's to decide)."""
        bad = sum(n for s, n in self.by_status.items() if s not in SUCCESS_STATUSES)
        return 0 if bad == 0 and self.reconciled else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def human(self) -> str:
        lines = [self.reconcile]
        if self.blank:
            lines.append(f"{self.blank} blank rows skipped (no data, no results row)")
        if not self.reconciled:
            lines.insert(0, "WARNING: the status counts do not add up to the input rows")
        problems = [f"{status}: " + ", ".join(f"{n} {code}" for code, n in sorted(
                        self.by_code[status].items(), key=lambda kv: (-kv[1], kv[0])))
                    for status in (Status.FAILED, Status.INVALID) if self.by_code.get(status)]
        if problems:
            lines.append("; ".join(problems))
        lines.append(f"{self.calls} calls, {self.retries} retries, {self.throttled} × 429, "
                     f"{self.credits} credits, {duration_text(self)}")
        unknown = unknown_calls_line(self)
        if unknown:
            lines.append(unknown)
        if self.ignored_entries:
            lines.append(f"{self.ignored_entries} answer entries named records or cadences "
                         "that were not in their call: ignored, never taken as evidence")
        lines.append(f"results: {self.results_path}")
        retry = f"{self.retry_rows} rows to retry" if self.retry_rows else "nothing to retry"
        lines.append(f"retry:   {self.retry_path} ({retry})")
        lines.append(f"summary: {self.summary_path}")
        if self.report_path:
            lines.append(f"report:  {self.report_path}")
        return "\n".join(lines)


def duration_text(summary: Summary) -> str:
    """``12.3 s``, or ``at least 12.3 s (...)`` when a run never recorded its end."""
    run = "" if summary.run_duration_s in (None, summary.duration_s) \
        else f" (this run {summary.run_duration_s:.1f} s)"
    if summary.duration_lower_bound:
        return (f"at least {summary.duration_s:.1f} s{run} (a run never recorded its end: "
                "counted to its last logged call)")
    return f"{summary.duration_s:.1f} s{run}"


def unknown_calls_line(summary: Summary) -> str | None:
    """What the calls in flight when a run was killed mean, said once wherever the calls are."""
    return unknown_calls_text(summary.calls, summary.calls_outcome_unknown)


def side_paths(results_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(retry file, summary file) beside the results: ``<stem>.retry.csv``, ``<stem>.summary.json``.
    """
    p = Path(results_path)
    return p.with_name(p.stem + ".retry.csv"), p.with_name(p.stem + ".summary.json")


def left_out_line(summary: Summary) -> str | None:
    """One line for stderr when the input's own columns could not be carried, else None."""
    why = summary.extra.get("input_columns_left_out")
    return f"the input's own columns are left out of the results: {why}" if why else None


def cut_cells_line(summary: Summary, journal: str | os.PathLike[str] | None = None
                   ) -> str | None:
    """One line for stderr when the .xlsx results cut texts too long for a cell, else None;
    with ``journal``, the command that writes the same results whole, as CSV."""
    n = summary.extra.get("xlsx_cells_cut")
    if not n:
        return None
    whole = Path(summary.results_path).with_suffix(".csv")
    how = (f": `batcher report --journal {shlex.quote(pasted(journal))} "
           f"--results {shlex.quote(pasted(whole))}` writes them" if journal else "")
    return (f"{n:,} cell(s) of {summary.results_path} held more than the {XLSX_CELL_MAX:,} "
            "characters an .xlsx cell holds: each is cut to fit and ends in "
            f"'…[cut: N chars]' (N: its whole length); .csv or .parquet results keep every "
            f"text whole{how}")


def defused_cells_line(summary: Summary) -> str | None:
    """One line for stderr when text cells of the results were given a leading ``'``, else
    None: those cells differ from the input's (and from a server's message) by it."""
    n = summary.extra.get("formula_cells_defused")
    if not n:
        return None
    return (f"{n:,} text cell(s) of {summary.results_path} start with =, +, -, @, a tab or a "
            "CR and were given a leading ' so that no spreadsheet evaluates them (a phone "
            "number '+49…' too); the Parquet results and the retry file keep them as given")


def reconcile_line(rows: int, by_status: dict[str, int]) -> tuple[str, bool]:
    """``1000 rows = 900 unenrolled + 100 failed`` and whether the parts add up to ``rows``."""
    parts = [f"{by_status[s]} {s}" for s in _STATUS_ORDER if by_status.get(s)]
    parts += [f"{n} {s}" for s, n in sorted(by_status.items()) if s not in _STATUS_ORDER and n]
    total = sum(by_status.values())
    if total == rows:
        return f"{rows} rows = {' + '.join(parts) or '0'}", True
    return f"{rows} rows != {' + '.join(parts) or '0'} (= {total})", False


def check_results_capacity(results_path: str | os.PathLike[str], rows: int) -> None:
    """Raise UsageError when ``rows`` results rows do not fit the results file: an ``.xlsx``
    sheet holds :data:`XLSX_MAX_ROWS` under its header (CSV and Parquet have no such bound).
    Call it before any call, with the number of results rows (input rows × cadences for a list
    of records)."""
    if Path(results_path).suffix.lower() == ".xlsx" and rows > XLSX_MAX_ROWS:
        raise UsageError(f"--results {results_path}: {rows:,} rows do not fit an .xlsx sheet "
                         f"({XLSX_MAX_ROWS:,} at most); use a .csv or .parquet name")


def write_results(journal: ResultSource, results_path: str | os.PathLike[str], *,
                  duration_s: float | Callable[[], float],
                  extra: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
                  chunk_rows: int = CHUNK_ROWS, blank: int = 0, carried: Carried | None = None,
                  cadence_names: Mapping[str, str] | None = None,
                  until: threading.Event | None = None,
                  finished_at: str | None | type[NOW] = NOW,
                  duration_lower_bound: bool = False,
                  earlier_s: float | None = None) -> Summary:
    """Write results (CSV; Parquet for ``.parquet``/``.pq``; a sheet for ``.xlsx``), retry file
    and summary.

    Results columns: :data:`OUTPUT_SCHEMA` (``cadence_name`` looked up in ``cadence_names``, id →
    name; null when unknown), then ``carried``'s columns, renamed by :func:`carried_names`.
    ``carried.tables()`` must stream exactly one row per results row, in order, in chunks of any
    size. ``blank``: the input's all-empty rows, counted apart from its data rows.
    ``duration_s``: the run's seconds, or a clock read once the results and retry file are
    written (the summary then counts the time they took). ``extra``: the summary's extra
    fields, or a function giving them once every row is written. ``until``: for the results
    of a run still sending, set once it stops: the rows are written as they settle
    (:meth:`~batcher.journal.Journal.iter_result_chunks`), and the files end once it is set.
    ``finished_at``: when the job's run ended (UTC, ISO 8601), :class:`NOW` for a run ending
    now; ``batcher report`` gives the end its journal recorded, or None for a run that never
    recorded one (killed): the time the files are rewritten is not when the job ended.
    ``earlier_s``: the job's seconds over its earlier runs, for a run: ``duration_s`` is then
    this run's (``run_duration_s``) and the summary's ``duration_s`` the job's, both; None
    (``batcher report``): ``duration_s`` is the job's.
    ``duration_lower_bound``: the job's time holds a run that never recorded its end, so
    ``duration_s`` is at least that (the summary, its line and the page say so).

    When ``carried``'s stream cannot be read to its end in step with the results (the input
    unreadable in part, or not lining up), the results are written again without it, and
    ``extra["input_columns_left_out"]`` says why: the results of the calls made must never
    hang on the input's other columns (a job stuck on them could never end).

    Raises UsageError for an ``.xlsx`` that the rows would overflow, OSError when a file cannot
    be written; the previous files are then left as they were.
    """
    try:
        return _write_results(journal, results_path, duration_s=duration_s, extra=extra,
                              chunk_rows=chunk_rows, blank=blank, carried=carried,
                              cadence_names=cadence_names, until=until,
                              finished_at=finished_at,
                              duration_lower_bound=duration_lower_bound, earlier_s=earlier_s)
    except _CarryFailed as exc:
        given, why = extra, str(exc)

        def left_out() -> dict[str, Any]:
            return {**((given() if callable(given) else given) or {}),
                    "input_columns_left_out": why}

        return _write_results(journal, results_path, duration_s=duration_s, extra=left_out,
                              chunk_rows=chunk_rows, blank=blank, carried=None,
                              cadence_names=cadence_names, until=until,
                              finished_at=finished_at,
                              duration_lower_bound=duration_lower_bound, earlier_s=earlier_s)


class _CarryFailed(Exception):
    """The input's other columns could not be carried (why, in one line)."""


def _write_results(journal: ResultSource, results_path: str | os.PathLike[str], *,
                   duration_s: float | Callable[[], float],
                   extra: dict[str, Any] | Callable[[], dict[str, Any]] | None,
                   chunk_rows: int, blank: int, carried: Carried | None,
                   cadence_names: Mapping[str, str] | None,
                   until: threading.Event | None,
                   finished_at: str | None | type[NOW],
                   duration_lower_bound: bool = False,
                   earlier_s: float | None = None) -> Summary:
    results = Path(os.path.abspath(results_path))
    check_results_capacity(results, journal.rows)
    retry, summary_file = side_paths(results)
    for target in (results, retry, summary_file):
        _remove_stale_temps(target)
    carried = carried if carried and carried.names else None
    if (carried and results.suffix.lower() == ".xlsx"
            and len(OUTPUT_SCHEMA) + len(carried.names) > XLSX_MAX_COLUMNS):
        raise _CarryFailed(f"{len(carried.names):,} columns do not fit beside the results' "
                           f"own in an .xlsx sheet ({XLSX_MAX_COLUMNS:,} columns at most); "
                           ".csv or .parquet results keep them")
    carry_schema = pa.schema([(n, pa.string()) for n in carried_names(carried.names)]
                             if carried else [])
    retry_schema = pa.schema([(c, pa.string()) for c in RETRY_COLUMNS] + [
        (n, pa.string()) for n in (carried_names(carried.names, RETRY_COLUMNS) if carried
                                   else ())])
    names = _CadenceNames(cadence_names)
    with ExitStack() as stack:
        tmp_results = stack.enter_context(_atomic(results))
        tmp_retry = stack.enter_context(_atomic(retry))
        tmp_summary = stack.enter_context(_atomic(summary_file))
        out = stack.enter_context(closing(_results_file(
            results, tmp_results, _concat_schemas(OUTPUT_SCHEMA, carry_schema), stack)))
        retry_out = stack.enter_context(closing(_CsvFile(tmp_retry, retry_schema, defuse=False)))
        aligned = _Aligned(carried.tables(), carry_schema) if carried else None
        tally = _Tally()
        # the results and the retry file are made and encoded in threads of their own (Arrow's
        # kernels and writers release the GIL) while the next chunks are read from the journal;
        # a few chunks ahead at most (one writer may take longer over a chunk than the other),
        # so memory stays flat. The retry thread also counts the chunks, in order (one thread
        # each).
        writers = [stack.enter_context(ThreadPoolExecutor(1, f"results-{n}")) for n in "ab"]
        written: deque[list[Future[None]]] = deque()
        for chunk in journal.iter_result_chunks(chunk_rows=chunk_rows, until=until):
            if not chunk.schema.equals(RESULT_SCHEMA):
                chunk = chunk.cast(RESULT_SCHEMA)
            for piece, beside in _beside(chunk, aligned):
                while len(written) >= _CHUNKS_AHEAD:
                    for done in written.popleft():
                        done.result()
                written.append([writers[0].submit(_write_chunk, out, piece, names, beside),
                                writers[1].submit(_write_retry, retry_out, retry_schema, piece,
                                                  beside, tally)])
        for done in (done for both in written for done in both):
            done.result()
        if aligned:
            _carry(aligned.end)
        if until is not None:  # every row settled before the run stopped: the run's end is
            until.wait()  # what the summary tells (its time, why it stopped)
        if callable(extra):
            extra = extra()
        if isinstance(out, _XlsxFile) and out.cut:
            extra = {**(extra or {}), "xlsx_cells_cut": out.cut}
        if getattr(out, "defused", 0):  # said: a results cell that differs from its input's
            extra = {**(extra or {}), "formula_cells_defused": out.defused}
        job_s, run_s = _durations(duration_s, earlier_s)
        summary = tally.summary(journal, duration_s=job_s, run_duration_s=run_s,
                                results=results, retry=retry,
                                summary_file=summary_file, blank=blank, extra=extra,
                                finished_at=utc_now() if finished_at is NOW else finished_at,
                                duration_lower_bound=duration_lower_bound)
        out.finish(summary)
        if callable(duration_s):  # an .xlsx is written out by finish(): its time counts too
            job_s, run_s = _durations(duration_s, earlier_s)
            summary = replace(summary, duration_s=job_s, run_duration_s=run_s)
        _dump_summary(summary, tmp_summary)
    return summary


def _durations(duration_s: float | Callable[[], float], earlier_s: float | None
               ) -> tuple[float, float | None]:
    """(the job's seconds: this run's after its earlier runs'; this run's, or None when
    ``duration_s`` is the job's — ``batcher report``), a clock read once for both."""
    run = round(duration_s() if callable(duration_s) else duration_s, 3)
    if earlier_s is None:
        return run, None
    return round(earlier_s + run, 3), run


def with_report(summary: Summary, page: str | os.PathLike[str]) -> Summary:
    """The summary naming the HTML report written after it, its file written again
    (atomically) to say so; the file keeps ``report_path`` null if it cannot be rewritten."""
    summary = replace(summary, report_path=str(page))
    with suppress(OSError), _atomic(Path(summary.summary_path)) as tmp:
        _dump_summary(summary, tmp)
    return summary


def _dump_summary(summary: Summary, path: Path) -> None:
    doc = summary.to_dict()
    doc["results"], doc["retry"] = doc.pop("results_path"), doc.pop("retry_path")
    del doc["summary_path"]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


def carried_names(names: Iterable[str], columns: Iterable[str] = OUTPUT_SCHEMA.names
                  ) -> tuple[str, ...]:
    """The names the input's other columns get beside a file's own ``columns`` (the results';
    the retry file's: :data:`RETRY_COLUMNS`).

    A name that is one of ``columns`` as batcher matches headers (``Status``, ``Finished At``:
    Excel's tables, SQL and batcher itself take them for ``status``, ``finished_at``), or that
    batcher would read as a module, record id or cadence column (``ID``, ``Cadence``: the retry
    file would then be an ambiguous input), or that an earlier one took, gets ``input_`` in
    front until it is free. So the retry file
    keeps a column such as ``status`` as it is: read again, it is carried under the same name,
    and the next round's results name it as this round's do (``input_status``).
    """
    taken = set(columns)
    own = {_normalise_header(c) for c in taken} | set(_ALIASES)
    out = []
    for name in names:
        while name in taken or _normalise_header(name) in own:
            name = "input_" + name
        taken.add(name)
        out.append(name)
    return tuple(out)


def _concat_schemas(*schemas: pa.Schema) -> pa.Schema:
    return pa.schema([f for s in schemas for f in s])


class _CadenceNames:
    """Cadence id → name, looked up a column at a time."""

    def __init__(self, names: Mapping[str, str] | None) -> None:
        self._ids = pa.array(list(names or {}), pa.string())
        self._names = pa.array(list((names or {}).values()), pa.string())

    def of(self, cadence_ids: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """The name of each id; null for an id the org's list did not hold."""
        if not len(self._ids):
            return pa.nulls(len(cadence_ids), pa.string())
        return pc.take(self._names, pc.index_in(cadence_ids, value_set=self._ids))


def _carry(step: Callable[..., Any], *args: Any) -> Any:
    """A step of the carried stream; its failure, as _CarryFailed."""
    try:
        return step(*args)
    except (InputError, ValueError, OSError) as exc:
        raise _CarryFailed(str(exc)) from None


class _Aligned:
    """The carried tables re-cut to the lengths of the results chunks, one at a time."""

    def __init__(self, tables: Iterator[pa.Table], schema: pa.Schema) -> None:
        self._tables = tables
        self._schema = schema
        self._head = schema.empty_table()
        self._taken = 0

    def take(self, n: int, max_bytes: int | None = None) -> pa.Table:
        """The next ``n`` rows, as strings named by the schema, or fewer (one at least) once
        they hold ``max_bytes``; ValueError when the stream ends first."""
        parts, held = [], 0
        while n and (max_bytes is None or held < max_bytes):
            if not self._head.num_rows:
                self._head = self._next()
                continue
            k = n
            if max_bytes is not None:  # rows of this table that fit, at its mean row size
                per_row = max(self._head.nbytes / self._head.num_rows, 1.0)
                k = min(n, max(1, int((max_bytes - held) / per_row)))
            part = self._head.slice(0, k)
            self._head = self._head.slice(part.num_rows)
            parts.append(part)
            held += part.nbytes
            n -= part.num_rows
            self._taken += part.num_rows
        return pa.concat_tables(parts) if parts else self._schema.empty_table()

    def end(self) -> None:
        """ValueError unless the stream is exhausted: each carried row has its results row."""
        extra = self._head.num_rows + sum(t.num_rows for t in self._tables)
        if extra:
            raise ValueError(f"the input's own columns have {extra} rows more than the "
                             f"{self._taken} results rows; they cannot be carried")

    def _next(self) -> pa.Table:
        table = next(self._tables, None)
        if table is None:
            raise ValueError(f"the input's own columns ended after {self._taken} rows, before "
                             "the results rows; they cannot be carried")
        if table.num_columns != len(self._schema):
            raise ValueError(f"the input's own columns came as {table.num_columns} columns, "
                             f"not {len(self._schema)}")
        return pa.Table.from_arrays([c.cast(pa.string()) for c in table.columns],
                                    schema=self._schema)


def _beside(chunk: pa.Table, aligned: _Aligned | None
            ) -> Iterator[tuple[pa.Table, pa.Table | None]]:
    """A journal chunk in pieces, each with its rows' carried columns (``CARRY_BYTES`` of them
    at most, one row at least): the whole chunk at once when nothing is carried."""
    if aligned is None:
        yield chunk, None
        return
    start = 0
    if not chunk.num_rows:
        yield chunk, _carry(aligned.take, 0)
    while start < chunk.num_rows:
        beside = _carry(aligned.take, chunk.num_rows - start, CARRY_BYTES)
        yield chunk.slice(start, beside.num_rows), beside
        start += beside.num_rows


def _results_table(chunk: pa.Table, names: _CadenceNames, extra: pa.Table | None) -> pa.Table:
    """A journal chunk with the cadence names and, beside its rows, the input's own columns
    (``extra``: as many rows)."""
    at = chunk.schema.get_field_index("cadence_id") + 1
    table = chunk.add_column(at, "cadence_name", names.of(chunk["cadence_id"]))
    if extra is None:
        return table
    # one table of all the columns: a column appended at a time copies the schema each time,
    # which a sheet with a stray cell in its last column (16,000 columns) pays for in minutes
    return pa.Table.from_arrays([*table.columns, *extra.columns],
                                names=[*table.column_names, *extra.column_names])


def _write_chunk(out: _ResultsFile, chunk: pa.Table, names: _CadenceNames,
                 extra: pa.Table | None) -> None:
    """Write one chunk's results rows (in the results thread)."""
    out.write(_results_table(chunk, names, extra))


def _write_retry(retry_out: _CsvFile, schema: pa.Schema, chunk: pa.Table,
                 extra: pa.Table | None, tally: _Tally) -> None:
    """Write one chunk's rows to retry and count the chunk (in the retry thread)."""
    columns = [chunk.column(c) for c in RETRY_COLUMNS] + (extra.columns if extra else [])
    again = pa.Table.from_arrays(columns, schema=schema).filter(_retry_mask(chunk))
    if again.num_rows:
        retry_out.write(again)
    tally.add(chunk, again.num_rows)


#: what the rows are counted by, once per chunk: every count the summary and the page show
_TALLY_KEYS = ["module", "cadence_id", "status", "code"]
#: cadences the summary lists one by one (most rows first); the others are summed in one line
BY_CADENCE_MAX = 1000
_COMPACT_ROWS = 1_000_000  # counted groups held before they are grouped again


@dataclass
class _Tally:
    """Counts of the rows actually written, chunk by chunk, kept as Arrow tables of groups
    (a million cadences — swapped columns — cost megabytes, not a Python object per group)."""

    written: int = 0
    retry_rows: int = 0
    _groups: list[pa.Table] = field(default_factory=list)  # _TALLY_KEYS + rows
    _held: int = 0
    _left: int = 0  # groups the last regrouping left: the next waits for twice as many

    def add(self, chunk: pa.Table, retry_rows: int) -> None:
        self.written += chunk.num_rows
        self.retry_rows += retry_rows
        keys = [pc.fill_null(chunk[k], "") for k in _TALLY_KEYS]  # empty and missing: one
        grouped = pa.table(dict(zip(_TALLY_KEYS, keys, strict=True))).group_by(
            _TALLY_KEYS, use_threads=False).aggregate([([], "count_all")])
        self._groups.append(grouped.rename_columns([*_TALLY_KEYS, "rows"]))
        self._held += grouped.num_rows
        if self._held > max(_COMPACT_ROWS, 2 * self._left) and len(self._groups) > 1:
            self._groups = [_regrouped(self._groups, _TALLY_KEYS)]
            self._held = self._left = self._groups[0].num_rows

    def counts(self) -> _Counts:
        """The summary's counts: by status, by status and code, by cadence."""
        if not self._groups:
            return _Counts({}, {}, [], None)
        total = _regrouped(self._groups, _TALLY_KEYS)
        by_status = dict(zip(*_regrouped([total], ["status"]).select(["status", "rows"])
                             .to_pydict().values(), strict=True))
        by_code: dict[str, dict[str, int]] = {}
        coded = _regrouped([total.filter(pc.not_equal(total["code"], ""))], ["status", "code"])
        for status, code, n in zip(*coded.to_pydict().values(), strict=True):
            by_code.setdefault(status, {})[code] = n
        lines, other = _by_cadence(_regrouped([total], ["module", "cadence_id", "status"]))
        return _Counts(by_status, by_code, lines, other)

    def summary(self, journal: ResultSource, *, duration_s: float, results: Path, retry: Path,
                summary_file: Path, blank: int, extra: dict[str, Any] | None,
                finished_at: str | None, duration_lower_bound: bool = False,
                run_duration_s: float | None = None) -> Summary:
        """The summary, its counts reconciled against the rows the journal loaded."""
        rows = journal.rows
        counts = self.counts()
        line, ok = reconcile_line(rows, counts.by_status)
        if self.written != rows:
            line, ok = f"{line}; {self.written} rows written", False
        counters = journal.counters()
        calls = counters.get("calls", 0)
        # a source without a call log (no plan loaded) has none in doubt
        logged = counters.get("calls_logged", calls)
        return Summary(
            rows=rows, by_status=counts.by_status, by_code=counts.by_code,
            calls=calls, retries=counters.get("retries", 0),
            throttled=counters.get("throttled", 0), credits=counters.get("credits", 0),
            calls_outcome_unknown=max(0, calls - logged),
            duration_s=round(float(duration_s), 3), results_path=str(results),
            retry_path=str(retry), summary_path=str(summary_file), retry_rows=self.retry_rows,
            reconcile=line, reconciled=ok, started_at=journal.started_at,
            ignored_entries=counters.get("ignored_entries", 0), blank=blank,
            by_cadence=counts.by_cadence, other_cadences=counts.other_cadences,
            finished_at=finished_at, extra=dict(extra or {}),
            duration_lower_bound=duration_lower_bound, run_duration_s=run_duration_s)


@dataclass(frozen=True)
class _Counts:
    by_status: dict[str, int]
    by_code: dict[str, dict[str, int]]
    by_cadence: list[dict[str, Any]]
    other_cadences: dict[str, Any] | None


def _regrouped(tables: list[pa.Table], keys: list[str]) -> pa.Table:
    """Groups (``keys`` + ``rows``) of counted tables, summed by ``keys``."""
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return table.group_by(keys, use_threads=False).aggregate([("rows", "sum")]) \
        .rename_columns([*keys, "rows"])


def _by_cadence(counted: pa.Table) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(lines, other): one line {module, cadence_id, rows, by_status} per (module, cadence) of
    ``counted`` (module, cadence_id, status, rows; "" for none), most rows first, at most
    :data:`BY_CADENCE_MAX`; ``other`` sums the rest ({cadences, rows, by_status}), None when
    there is none."""
    counted = counted.append_column("pair", pc.binary_join_element_wise(
        counted["module"], counted["cadence_id"], "\x1f"))  # one key for (module, cadence)
    lines = counted.group_by(["pair", "module", "cadence_id"], use_threads=False).aggregate(
        [("rows", "sum")])
    order = pc.sort_indices(lines, sort_keys=[("rows_sum", "descending"),
                                              ("module", "ascending"),
                                              ("cadence_id", "ascending")])
    top = lines.take(order[:BY_CADENCE_MAX])
    shown = pc.is_in(counted["pair"], value_set=top["pair"])
    by_status: dict[str, dict[str, int]] = {}
    for p, status, n in zip(*counted.filter(shown).select(["pair", "status", "rows"])
                            .to_pydict().values(), strict=True):
        by_status.setdefault(p, {})[status] = n
    out = [{"module": m or None, "cadence_id": c or None, "rows": n, "by_status": by_status[p]}
           for p, m, c, n in zip(*top.select(["pair", "module", "cadence_id", "rows_sum"])
                                 .to_pydict().values(), strict=True)]
    if lines.num_rows <= BY_CADENCE_MAX:
        return out, None
    rest = _regrouped([counted.filter(pc.invert(shown)).select(["status", "rows"])], ["status"])
    statuses = dict(zip(*rest.to_pydict().values(), strict=True))
    return out, {"cadences": lines.num_rows - BY_CADENCE_MAX, "rows": sum(statuses.values()),
                 "by_status": statuses}


def _retry_mask(chunk: pa.Table) -> pa.ChunkedArray:
    status = chunk["status"]
    failed_retryable = pc.and_(pc.equal(status, Status.FAILED.value),
                               pc.fill_null(chunk["retryable"], False))
    return pc.or_(pc.equal(status, Status.NOT_SENT.value), failed_retryable)


# ---------------------------------------------------------------------- formula safety

def _defused_text(text: str) -> str:
    return re.sub(_FORMULA_START, _DEFUSED, text)


def _defused_schema(schema: pa.Schema) -> pa.Schema:
    """The schema with its names defused: a header is a cell too."""
    return pa.schema([f.with_name(_defused_text(f.name)) for f in schema])


def _defused(table: pa.Table, schema: pa.Schema) -> tuple[pa.Table, int]:
    """``table`` under ``schema`` (its defused twin) with every text column defused, vectorised,
    and how many cells were."""
    columns, cells = [], 0
    for c in table.columns:
        if pa.types.is_string(c.type):
            c, n = _defused_column(c)
            cells += n
        columns.append(c)
    return pa.Table.from_arrays(columns, schema=schema), cells


def _defused_column(column: pa.Array | pa.ChunkedArray
                    ) -> tuple[pa.Array | pa.ChunkedArray, int]:
    """A text column defused, and how many of its texts were. The texts that start like a
    formula are found from their first bytes; only those go through the regular expression
    (most columns have none, and are returned as they are)."""
    if isinstance(column, pa.ChunkedArray):
        parts = [_defused_column(c) for c in column.chunks]
        return (pa.chunked_array([c for c, _ in parts], column.type),
                sum(n for _, n in parts))
    hit = _formula_rows(column)
    cells = int(hit.sum())
    if not cells:
        return column, 0
    mask = arrow_of(hit)
    fixed = pc.replace_substring_regex(column.filter(mask), _FORMULA_START, _DEFUSED)
    return pc.replace_with_mask(column, mask, fixed), cells


def _formula_rows(column: pa.Array) -> np.ndarray:
    """Which texts of a string array start with a byte of :data:`_FORMULA_BYTES` (never a null
    one): what :data:`_FORMULA_START` matches, read off the offsets and data buffers."""
    n = len(column)
    _, offsets_buf, data_buf = column.buffers()
    if not n or data_buf is None or not data_buf.size:
        return np.zeros(n, dtype=bool)
    offsets = np.frombuffer(offsets_buf, np.int32, count=n + 1, offset=column.offset * 4)
    data = np.frombuffer(data_buf, np.uint8)
    starts = offsets[:-1]
    hit = _FORMULA_BYTES[data[np.minimum(starts, len(data) - 1)]] & (offsets[1:] > starts)
    if column.null_count:
        hit &= numpy_of(column.is_valid())
    return hit


# ---------------------------------------------------------------------- results files

class _ResultsFile(Protocol):
    """A results file being written: rows chunk by chunk, then the summary, then closed."""

    def write(self, table: pa.Table) -> None: ...

    def finish(self, summary: Summary) -> None: ...

    def close(self) -> None: ...


def _results_file(results: Path, tmp: Path, schema: pa.Schema, stack: ExitStack) -> _ResultsFile:
    """The writer for ``results``' extension, writing to ``tmp``; scratch space lives on
    ``stack``."""
    suffix = results.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        return _ParquetFile(tmp, schema)
    if suffix == ".xlsx":
        return _XlsxFile(results, tmp, schema, stack.enter_context(_scratch_dir(results)))
    return _CsvFile(tmp, schema)


class _ParquetFile:
    """Raw values: Parquet is read by programs, never evaluated."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        # dictionaries pay for repeated values only: a record id (or row) rarely repeats, nor
        # does a batch id within a chunk of rows in input order (a batch's pairs are spread over
        # the input), and trying them costs a quarter of the writing time; nobody filters on
        # their min/max, whose statistics cost another tenth
        unique = ("row", "record_id", "batch_id")
        self._writer = pq.ParquetWriter(
            path, schema, compression="zstd",
            use_dictionary=[n for n in schema.names if n not in unique],
            write_statistics=[n for n in schema.names if n not in unique])

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def finish(self, summary: Summary) -> None:
        pass

    def close(self) -> None:
        self._writer.close()


class _CsvFile:
    """Defused text (unless ``defuse`` is False: the retry file is an input, and must give back
    the values it was given); the header is quoted only when a name needs it."""

    def __init__(self, path: Path, schema: pa.Schema, defuse: bool = True) -> None:
        self._defuse = defuse
        self._schema = _defused_schema(schema) if defuse else schema
        #: cells (header included) given a leading ' so that no spreadsheet evaluates them
        self.defused = sum(a != b for a, b in zip(schema.names, self._schema.names, strict=True))
        plain = not any(set(n) & set(',"\r\n') for n in self._schema.names)
        self._writer = pacsv.CSVWriter(path, self._schema, write_options=pacsv.WriteOptions(
            quoting_header="none" if plain else "needed"))

    def write(self, table: pa.Table) -> None:
        if self._defuse:
            table, cells = _defused(table, self._schema)
            self.defused += cells
        elif not table.schema.equals(self._schema):
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def finish(self, summary: Summary) -> None:
        pass

    def close(self) -> None:
        self._writer.close()


def _write_text(sheet: Any, row: int, col: int, text: str) -> None:
    """A text cell. xlsxwriter's streaming mode writes a text that starts with ``<r>`` and ends
    with ``</r>`` as raw XML (its own rich strings look so): a note ``<r>a & b</r>`` made the
    whole workbook unreadable. Such a text is written as runs of itself (three: xlsxwriter
    takes no fewer), escaped; every reader joins them into the same text."""
    if text.startswith("<r>") and text.endswith("</r>"):
        sheet.write_rich_string(row, col, text[:1], text[1:2], text[2:])
    else:
        sheet.write_string(row, col, text)


class _XlsxFile:
    """A "results" sheet streamed row by row (xlsxwriter's constant_memory mode: one row in
    memory), its header frozen and filtered, and a "summary" sheet.

    Every text, ids included, is a string cell, so Excel never turns an id into a rounded number;
    numbers and booleans keep their types; nulls and empty texts are blank cells. A text longer
    than a cell's 32,767 characters is cut to fit, ending in ``…[cut: N chars]`` (N: its whole
    length), and counted in ``cut``: the caller says so (CSV and Parquet keep every text whole).
    """

    def __init__(self, results: Path, path: Path, schema: pa.Schema, scratch: Path) -> None:
        import xlsxwriter  # here: most jobs write no .xlsx, and none before its first call

        # ZIP64 only when a part passes 4 GiB; the parts go to scratch beside the results, not
        # to a /tmp that may be small or held in memory
        self._book = xlsxwriter.Workbook(str(path), {
            "constant_memory": True, "tmpdir": str(scratch), "use_zip64": True})
        self._sheet = self._book.add_worksheet("results")
        self._results = results
        self._schema = _defused_schema(schema)
        #: cells (header included) given a leading ' so that no spreadsheet evaluates them
        self.defused = sum(a != b for a, b in zip(schema.names, self._schema.names, strict=True))
        self._cells = [self._cell_writer(f.type) for f in schema]
        self._rows = 0
        #: cells whose text was cut to fit (header included)
        self.cut = 0
        for col, name in enumerate(self._schema.names):
            _write_text(self._sheet, 0, col, self._fitted_text(name))
        self._sheet.freeze_panes(1, 0)

    def _cell_writer(self, kind: pa.DataType) -> Callable[[int, int, Any], Any]:
        if pa.types.is_boolean(kind):
            return self._sheet.write_boolean
        if pa.types.is_integer(kind):
            return self._sheet.write_number
        return partial(_write_text, self._sheet)

    def write(self, table: pa.Table) -> None:
        """Append the rows; UsageError past the sheet's last row (xlsxwriter would drop them)."""
        check_results_capacity(self._results, self._rows + table.num_rows)
        table, cells = _defused(table, self._schema)
        self.defused += cells
        columns = [self._fitted(c) for c in table.columns]
        cells = self._cells
        for row, values in enumerate(zip(*columns, strict=True), start=self._rows + 1):
            for col, value in enumerate(values):
                if value is not None and value != "":
                    cells[col](row, col, value)
        self._rows += table.num_rows

    def _fitted(self, column: pa.ChunkedArray) -> list[Any]:
        """A column's values, a text too long for a cell cut to fit (found from the byte
        lengths: a text of at most 32,767 bytes has no more UTF-16 units)."""
        values = column.to_pylist()
        if pa.types.is_string(column.type):
            long = pc.fill_null(pc.greater(pc.binary_length(column), XLSX_CELL_MAX), False)
            for i in np.flatnonzero(numpy_of(long)).tolist():
                values[i] = self._fitted_text(values[i])
        return values

    def _fitted_text(self, text: str) -> str:
        """``text`` when a cell holds it, else its head and ``…[cut: N chars]``, counted."""
        units = text.encode("utf-16-le")
        if len(units) <= 2 * XLSX_CELL_MAX:
            return text
        self.cut += 1
        marker = f"…[cut: {len(text)} chars]"
        room = 2 * (XLSX_CELL_MAX - len(marker))  # a pair cut in half is left out whole
        return units[:room].decode("utf-16-le", "ignore") + marker

    def finish(self, summary: Summary) -> None:
        """Filter over the data, add the summary sheet and write the file."""
        self._sheet.autofilter(0, 0, self._rows, len(self._cells) - 1)
        sheet = self._book.add_worksheet("summary")
        sheet.set_column(0, 0, 28)
        for row, (label, value) in enumerate(_summary_figures(summary)):
            _write_text(sheet, row, 0, _defused_text(label))
            if isinstance(value, str):
                _write_text(sheet, row, 1, _defused_text(value))
            elif isinstance(value, bool):
                sheet.write_boolean(row, 1, value)
            elif value is not None:
                sheet.write_number(row, 1, value)
        self._book.close()

    def close(self) -> None:
        pass  # after a failure: the scratch folder goes with its parts, the file is unlinked


def _summary_figures(summary: Summary) -> list[tuple[str, str | int | float | bool | None]]:
    """(label, value) lines of the summary sheet."""
    extra = summary.extra
    lines: list[tuple[str, str | int | float | bool | None]] = [
        ("rows", summary.rows), ("reconcile", summary.reconcile),
        ("reconciled", summary.reconciled)]
    # why rows are not_sent, and what the input looked like, as the JSON summary and the page
    # say it: a sheet of not_sent rows alone reads as a job that failed to send them
    if extra.get("dry_run"):
        lines.append(("dry run", "nothing was sent"))
    if extra.get("aborted"):
        lines.append(("aborted", str(extra["aborted"])))
    lines += [("warning", str(w)) for w in extra.get("warnings") or []]
    if extra.get("input_columns_left_out"):
        lines.append(("input columns left out", str(extra["input_columns_left_out"])))
    if extra.get("formula_cells_defused"):
        lines.append(("cells given a leading '", extra["formula_cells_defused"]))
    lines += [(f"status {s}", n) for s, n in sorted(summary.by_status.items(), key=_status_rank)]
    lines += [(f"code {s} {c}", n) for s, codes in sorted(summary.by_code.items(), key=_status_rank)
              for c, n in sorted(codes.items())]
    lines += [("calls", summary.calls), ("retries", summary.retries),
              ("throttled (429)", summary.throttled), ("credits", summary.credits),
              ("duration_s", summary.duration_s), ("run_duration_s", summary.run_duration_s),
              ("duration is a lower bound", summary.duration_lower_bound),
              ("calls whose outcome is unknown", summary.calls_outcome_unknown),
              ("rows to retry", summary.retry_rows),
              ("blank rows", summary.blank), ("ignored answer entries", summary.ignored_entries),
              ("started_at", summary.started_at), ("finished_at", summary.finished_at),
              ("retry file", summary.retry_path)]
    return lines


def _status_rank(item: tuple[str, Any]) -> tuple[int, str]:
    """Statuses in the order of :class:`Status`, unknown ones after them."""
    status = item[0]
    return (_STATUS_ORDER.index(status) if status in _STATUS_ORDER else len(_STATUS_ORDER), status)


# ---------------------------------------------------------------------- temporary files

_MAX_LINKS = 40  # as many links in a row as Linux follows


def written_through(target: Path) -> Path:
    """Where writing ``target`` lands: through a symbolic link (``latest.csv ->
    /data/2026-12-01.csv``), the file it names, so a write updates that file and keeps the link —
    as a shell's ``>`` does. Link by link, only links owned by this user or by the owner of
    their folder (as the kernel's protected_symlinks, for a link planted in a shared folder
    such as /tmp); the path returned is a link only when it is one not followed."""
    for _ in range(_MAX_LINKS):
        try:
            st = os.lstat(target)
            if not stat.S_ISLNK(st.st_mode):
                return target
            if st.st_uid not in (os.geteuid(), os.stat(target.parent).st_uid):
                return target
            target = target.parent / os.readlink(target)
        except OSError:  # not there (a dangling link's target): written as named
            return target
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(target))


def temp_path(target: Path) -> Path:
    """A hidden name beside ``target`` that carries our pid (see :func:`_remove_stale_temps`)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed onto it if the block succeeds, else removed.

    Nested blocks rename in reverse order of entry, so the results file (entered first) lands last.
    A symbolic link is written through (:func:`written_through`).
    """
    target = written_through(target)
    tmp = temp_path(target)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _scratch_dir(target: Path) -> Iterator[Path]:
    """A private folder beside ``target`` for a writer's own temporary files, removed after the
    block."""
    path = temp_path(written_through(target))
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale_temps(target: Path) -> None:
    """Remove the temporary files (and folders) of ``target`` that a killed run left (their pid
    is gone)."""
    target = written_through(target)
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid = tmp.name[len(target.name) + 2:].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        except OSError:  # alive (another user's), or not ours to judge
            pass


class UnplannedResults:
    """Results straight from the reader, for a job stopped before its journal was loaded.

    An abort during preflight (bad credentials, say) must still say what happened to every row:
    the valid ones were ``not_sent``; the journal stays empty, so the next run starts afresh.
    """

    def __init__(self, rows: int, tables: Callable[[], Iterable[pa.Table]], started_at: str,
                 message: str, counters: Callable[[], dict[str, int]] = dict) -> None:
        self._tables = tables
        self._message = message
        self._counters = counters
        self.rows = rows
        self.started_at = started_at

    def counters(self) -> dict[str, int]:
        """What was spent before the stop (the preflight's reads, say)."""
        return self._counters()

    def iter_result_chunks(self, chunk_rows: int = CHUNK_ROWS,
                           until: threading.Event | None = None) -> Iterator[pa.Table]:
        """Every row, as the reader gave it (nothing was sent: none waits for ``until``)."""
        for t in self._tables():
            # a record list's rows whose cadences were never read were not sent either
            n = t.num_rows
            unread = pc.fill_null(pc.equal(t["reason"], UNREAD), False)
            valid = pc.or_(pc.equal(t["status"], "valid"), unread)
            yield pa.table({
                "row": t["row"], "module": t["module"], "record_id": t["record_id"],
                "cadence_id": t["cadence_id"],
                "status": pc.if_else(valid, Status.NOT_SENT.value, t["status"]),
                "code": pc.if_else(unread, pa.nulls(n, pa.string()), t["code"]),
                "message": pc.if_else(unread, f"{self._message}; {UNREAD}",
                                      pc.if_else(valid, self._message, t["reason"])),
                "http_status": pa.nulls(n, pa.int64()), "attempts": pa.array([0] * n, pa.int64()),
                "batch_id": pa.nulls(n, pa.string()),
                "retryable": pc.if_else(valid, True, False),
                "finished_at": pa.nulls(n, pa.string()),
            }, schema=RESULT_SCHEMA)
