"""The command line: parse flags, call the library, map BatcherError to its exit code.

Everything a scheduler needs lives in the library (``batcher.job``); this module only translates.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import NoReturn

from . import __version__
from .errors import BatcherError, machine_limit
from .hostsettings import keep_heap, own_stderr
from .redact import Redactor
from .stopping import (
    STOP_SIGNALS,
    Stopper,
    last_line,
    signal_handler,
    signals_to,
    taken_signals,
)
from .streams import Tolerant


class _BadUsage(Exception):
    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """Bad usage is exit 2, the contract's code for usage errors, said by :func:`main` as the
    command line asked: the usage and the error, or one JSON line (``--log-format json``).

    Flags are taken only as spelled in full: with argparse's prefix matching, ``--res`` would
    be ``--results`` today and an error (or another flag) once a ``--resume`` exists, so a
    nightly script would change meaning with an upgrade."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise _BadUsage(self.format_usage(), f"error: {message}")


def _json_log(argv: Sequence[str]) -> bool:
    """Whether the command line asks for JSON lines, even one argparse could not read."""
    args, chosen = list(argv), "text"
    for a, b in zip(args, [*args[1:], ""], strict=True):  # the last one given wins
        if a == "--log-format":
            chosen = b
        elif a.startswith("--log-format="):
            chosen = a.partition("=")[2]
    return chosen == "json"


def _user_path(value: str) -> str:
    """A path as typed: a leading ``~`` the shell left alone (quoted, or from a crontab's
    variable) is the home folder, as the user meant, not a folder named ``~``. An empty one
    (``"$RESULTS"`` of an unset variable) is refused: taken as ``.`` or as no flag at all, it
    would name the current folder or the default journal instead of saying what is wrong."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset or empty variable?)")
    return os.path.expanduser(value)


def _input_path(value: str) -> str:
    """An input file: ``-`` is not standard input here (a list is read more than once, as for
    a pipe), and no file of that name is what the user meant."""
    if value == "-":
        raise argparse.ArgumentTypeError("'-' (standard input) cannot be read: a list is read "
                                         "more than once; save it to a file and name that")
    return _user_path(value)


def _port(value: str) -> int:
    """A TCP port (argparse says a bad one as usage: exit 2)."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0-65535)")
    return port


def _percentage(value: str) -> float:
    """A share from 0 to 100 (``nan`` is a float, but no share: argparse says it as usage)."""
    try:
        pct = float(value)
    except ValueError:
        pct = -1.0
    if not 0 <= pct <= 100:  # False for nan
        raise argparse.ArgumentTypeError(f"{value!r} is not a percentage (0-100)")
    return pct


#: --module fills a module only where the input has none: a module column's values win
_MODULE_HELP = ("module of rows that name none: every row when there is no module column, else "
                "the rows whose module cell is empty (the column's values win)")


_EXIT_CODES = """exit codes:
  0  every row ended unenrolled, not_enrolled, scheduled or duplicate
  1  the job finished but some rows are failed or invalid
  2  usage or input error: nothing was sent
  3  aborted (credentials, permission, --max-calls, a signal, Zoho down): re-run to resume"""

_EXAMPLES = {
    "run": "example:\n  batcher run leavers.csv --results out/{date}.csv\n"
           "  batcher run leavers.xlsx --results out.csv --cadence 5540230000040000001",
    "plan": "example:\n  batcher plan leavers.csv --json",
    "cadences": "example:\n  batcher cadences --module Leads",
    "report": "example:\n  batcher report --journal out.journal --results out.csv",
    "status": "example:\n  batcher status --journal out/leavers.journal\n"
              "  batcher status --journal out/leavers.journal --json",
    "sandbox": "example:\n  batcher sandbox --from leavers.csv --faults flaky",
}
_SANDBOX_EXIT = "exit codes:\n  0  stopped by Ctrl-C or SIGTERM\n  2  bad input, profile or port"


_STATUS_EXIT = ("exit codes:\n  0  the journal was read (the job's own state is in what is "
                "printed)\n  2  no journal there, or it cannot be read")
_PLAN_EXIT = ("exit codes:\n  0  every row is a pair to send (or a duplicate of one)\n"
              "  1  some rows are invalid (listed; the others would be sent)\n"
              "  2  the input or the flags cannot be used: nothing to plan")
_CADENCES_EXIT = ("exit codes:\n  0  the cadences were listed\n"
                  "  2  usage error (a --module with no cadence, a bad flag)\n"
                  "  3  credentials, permission or Zoho unreachable: fix it and run it again")
#: the commands whose exit codes are not run's
_OWN_EXIT = {"sandbox": _SANDBOX_EXIT, "status": _STATUS_EXIT, "plan": _PLAN_EXIT,
             "cadences": _CADENCES_EXIT}


def _epilog(command: str) -> str:
    return f"{_EXAMPLES[command]}\n\n{_OWN_EXIT.get(command, _EXIT_CODES)}"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="batcher", description="Un-enroll Zoho CRM records from cadences in bulk.",
                epilog=f"{_EXIT_CODES}\n\n'batcher COMMAND --help' shows each command's flags "
                       "and an example.", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"batcher {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, epilog=_epilog(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def where(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=_user_path,
                        help="TOML file naming the data centre and the environment variables "
                             "that hold the credentials (never the secrets themselves)")
        sp.add_argument("--api-domain", help="Zoho API domain (else ZOHO_API_DOMAIN or --dc)")
        sp.add_argument("--accounts-url", help="Zoho accounts URL (else ZOHO_ACCOUNTS_URL or --dc)")
        sp.add_argument("--dc", help="data centre: us, eu, in, au, jp, cn, ca, sa, uk")
        sp.add_argument("--no-token-cache", action="store_true",
                        help="neither reuse nor keep access tokens between commands (see "
                             "BATCHER_TOKEN_CACHE_DIR)")

    def reading(sp: argparse.ArgumentParser, module_help: str) -> None:
        sp.add_argument("--module", help=module_help)
        sp.add_argument("--delimiter", help="CSV delimiter: one character, or tab, comma, "
                        "semicolon, pipe (default: detected; an Excel 'sep=' line is honoured)")
        sp.add_argument("--record-column", metavar="HEADER",
                        help="the header of the record id column, exactly as in the file")
        sp.add_argument("--cadence-column", metavar="HEADER",
                        help="the header of the cadence id column, exactly as in the file")
        sp.add_argument("--module-column", metavar="HEADER",
                        help="the header of the module column, exactly as in the file")
        sp.add_argument("--cadence", action="append", default=[], metavar="ID",
                        help="INPUT is a list of records (no cadence column): un-enroll each "
                             "from this cadence (repeat the flag for several)")

    run = command("run", help="un-enroll every (record, cadence) pair of INPUT",
                  description="Un-enroll every (record, cadence) pair of INPUT, resumably: the "
                              "same command continues an interrupted job.")
    run.add_argument("input", type=_input_path,
                     help="CSV (.csv, .csv.gz), Excel .xlsx or Parquet list of record ids, "
                          "cadence ids and modules")
    run.add_argument("--results", required=True, type=_user_path,
                     help="results file (.csv, .xlsx, .parquet or .pq); {date} becomes today's UTC "
                          "date; a dry run never replaces a real job's results")
    run.add_argument("--journal", type=_user_path,
                     help="job journal (default: <results stem>.journal)")
    reading(run, _MODULE_HELP)
    run.add_argument("--all-cadences", action="store_true",
                     help="INPUT is a list of records (no cadence column): un-enroll each from "
                          "every manual_enrollment cadence of its module, read from the org "
                          "(a dry run shows which)")
    run.add_argument("--concurrency", type=int, default=4,
                     help="most calls in flight at once, 1-25 (default 4: leaves room for other "
                          "apps)")
    run.add_argument("--max-calls", type=int,
                     help="send at most this many un-enrol calls this run, at least 1 (the same "
                          "command continues)")
    run.add_argument("--dry-run", action="store_true",
                     help="plan and preflight only: nothing is sent (a --max-calls budget is not "
                          "spent)")
    run.add_argument("--halt-on-failures", type=_percentage, metavar="PCT",
                     help="stop (exit 3, resumable) when, after 500 answered pairs, more than "
                          "PCT %% of them failed for a reason a re-send does not cure (a wrong "
                          "module, a list from another org)")
    run.add_argument("--no-preflight", action="store_true", help="skip reading the org's cadences")
    run.add_argument("--quiet", action="store_true",
                     help="no progress output (why a job aborted is still said)")
    run.add_argument("--json", action="store_true",
                     help="print the summary as one JSON object on stdout at the end")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="stderr lines: text (default), or json: one object a line (event, "
                          "ts, message, fields) for a log collector")
    where(run)

    plan = command("plan", help="validate INPUT and show the calls a run would make",
                   description="Read INPUT, report its invalid and duplicate rows, and plan "
                               "the calls a run would make; sends nothing (exit 1: invalid "
                               "rows, 2: nothing usable).")
    plan.add_argument("input", type=_input_path, help="CSV, .xlsx or Parquet input, as for run")
    reading(plan, _MODULE_HELP)
    plan.add_argument("--json", action="store_true", help="one JSON object on stdout")

    cad = command("cadences", help="list the org's cadences",
                  description="List the org's cadences: id, module, type, state, name.")
    cad.add_argument("--module", help="only cadences of this module (exit 2 naming the "
                                      "modules that have cadences when none is in it)")
    cad.add_argument("--json", action="store_true", help="one JSON array on stdout")
    where(cad)

    rep = command("report", help="write the results of a job from its journal",
                  description="Write a job's results, retry file and summary from its journal "
                              "(e.g. after a disk problem); the exit code follows run's rules "
                              "for the job it describes.")
    rep.add_argument("--journal", required=True, type=_user_path,
                     help="the job's journal file ({date}: today's UTC date, as run makes it)")
    rep.add_argument("--results", required=True, type=_user_path,
                     help="results file to write (.csv, .xlsx or .parquet; {date} as in run)")

    st = command("status", help="show a job's progress from its journal, also while it runs",
                 description="Read a job's journal without writing it or waiting for its lock "
                             "(a running job is not disturbed) and show its rows by status, the "
                             "batches left, calls, 429s, call rate and ETA, the last error, and "
                             "whether a run holds it (its pid).")
    st.add_argument("--journal", required=True, type=_user_path,
                    help="the job's journal file ({date}: today's UTC date, as run makes it)")
    st.add_argument("--json", action="store_true", help="one JSON object on stdout")

    sb = command("sandbox", help="serve a local Zoho-shaped sandbox for rehearsals",
                 description="Serve a Zoho-shaped API and accounts server on loopback, with "
                             "the records of --from enrolled, to rehearse a job.")
    sb.add_argument("--port", type=_port, default=8765,
                    help="port on 127.0.0.1, 0-65535 (default 8765; 0: any free one)")
    sb.add_argument("--from", dest="from_input", type=_input_path,
                    help="enroll every valid pair of this input")
    sb.add_argument("--faults", default="none",
                    help="none, flaky, throttled, lossy, slow, short_tokens, mix")
    sb.add_argument("--seed", type=int, default=0,
                    help="seed of the generated world (without --from) and of the fault dice")
    reading(sb, "module for --from rows without a module column")
    sb.add_argument("--echo-auth", action="store_true",
                    help="echo the request's Authorization header (and, on the token endpoint, "
                         "the posted secrets) in every error answer: rehearse that no secret "
                         "leaks into results, journal or logs")
    return p


def _cmd_plan(args: argparse.Namespace) -> int:
    from .inputs import module_named_line, scan_input, sheet_lines, swapped_columns_line
    from .planreport import plan_scan, summarise

    scan = scan_input(args.input, input_options(args))
    # before the plan: a plan of swapped columns is long and useless
    for line in (swapped_columns_line(scan), *(line for line, _ in sheet_lines(scan)),
                 scan.module_named and module_named_line(scan)):
        if line:
            print(line, file=sys.stderr, flush=True)
    report = summarise(scan, plan_scan(scan))
    if args.json:
        print(json.dumps(report.as_dict(), indent=None))
    else:
        print(report.human())
    return report.exit_code()


def input_options(args: argparse.Namespace):  # -> InputOptions (imported when used)
    """The input flags of ``run``, ``plan`` and ``sandbox --from``."""
    from .inputs import InputOptions

    return InputOptions(
        module=args.module, delimiter=args.delimiter, record_column=args.record_column,
        cadence_column=args.cadence_column, module_column=args.module_column,
        cadences=tuple(args.cadence), all_cadences=getattr(args, "all_cadences", False))


def _env(args: argparse.Namespace) -> dict[str, str]:
    if not args.config:
        return dict(os.environ)
    from .config import env_with_config_file

    return env_with_config_file(args.config, os.environ)


def _cmd_run(args: argparse.Namespace, stopper: Stopper) -> int:
    # a signal while the job's modules load was kept for the job, which then stops at once with
    # its results written, as it would a moment later
    from .job import run_from_args

    return run_from_args(args, env=_env(args), stopper=stopper, reading=input_options(args))


def _cmd_cadences(args: argparse.Namespace) -> int:
    from .job import list_cadences

    return list_cadences(args, env=_env(args))


def _cmd_report(args: argparse.Namespace) -> int:
    from .job import report_from_journal
    from .models import with_date

    return report_from_journal(with_date(args.journal, flag="--journal"),
                               with_date(args.results, flag="--results"))


def _cmd_status(args: argparse.Namespace) -> int:
    from .models import with_date
    from .status import print_status

    return print_status(with_date(args.journal, flag="--journal"), as_json=args.json)


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox.serve import main as serve_main

    return serve_main(port=args.port, from_input=args.from_input, faults=args.faults,
                      seed=args.seed, module=input_options(args), echo_auth=args.echo_auth)


_COMMANDS = {"plan": _cmd_plan, "cadences": _cmd_cadences, "report": _cmd_report,
             "status": _cmd_status, "sandbox": _cmd_sandbox}


_PR_SET_THP_DISABLE = 41  # linux/prctl.h


def _own_process(command: str) -> None:
    """Memory settings for a process the command line owns (a library host keeps its own).

    On a VM that backs guest memory lazily, the first touch of fresh memory is what a large
    plan pays for most. Transparent huge pages zero 2 MB at each first touch, milliseconds a
    fault there: 1-2 s of system time in a 10M-pair plan (Arrow's allocator and numpy both ask
    for them); without them the plan ran 0.3-0.5 s faster and far more steadily. ``plan`` and
    ``run`` also keep large arrays in glibc's heap (:func:`hostsettings.keep_heap`; a job until
    it starts sending). Set before numpy is first imported."""
    os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
    own_stderr()  # a library's panic text held back from the terminal
    if sys.platform != "linux":
        return
    with contextlib.suppress(AttributeError, OSError):  # not there: keep the defaults
        ctypes.CDLL(None).prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)
    if command in ("plan", "run"):
        keep_heap()


def _redactor(args: argparse.Namespace | None) -> Redactor:
    """Every message main prints may quote a server or an exception: no secret of the
    environment (or of the variables a --config file names) reaches the terminal."""
    from .config import ACCESS_VAR, REFRESH_VARS

    env: dict[str, str] = dict(os.environ)
    with contextlib.suppress(BatcherError, AttributeError):
        env = _env(args) if args is not None else env
    return Redactor(env.get(name) for name in (*REFRESH_VARS[1:], ACCESS_VAR))


@contextlib.contextmanager
def _interrupting() -> Iterator[None]:
    """For the commands other than ``run``: SIGTERM stops like Ctrl-C (``KeyboardInterrupt``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in taken_signals()}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None, stopper: Stopper | None = None) -> int:
    """The command line; returns the exit code. From its first line a signal is kept for the
    job (``run``) or stops the command (the others) with exit 3 — never lost, never a
    traceback. ``stopper``: the one the program's signals already go to (:func:`entry`)."""
    stopper = stopper or Stopper()
    args = None
    try:
        with signals_to(stopper):
            args = _parser().parse_args(argv)
            _own_process(args.command)
            if args.command == "run":
                stopper.json_lines, stopper.json_stdout = args.log_format == "json", args.json
                return _cmd_run(args, stopper)
            stopper.check()  # a signal while the command line was read
        with _interrupting():
            return _COMMANDS[args.command](args)
    except _BadUsage as exc:
        given = list(sys.argv[1:] if argv is None else argv)
        if _json_log(given):
            sys.stderr.write(last_line(str(exc), 2, json_lines=True))
        else:
            sys.stderr.write(f"{exc.usage}batcher: {exc}\n")
        if given[:1] == ["run"] and "--json" in given:  # a scheduler reads stdout, every time
            print(json.dumps({"exit_code": 2, "error": str(exc)}))
        return 2
    except BatcherError as exc:
        return _failed(args, _redactor(args)(str(exc)), exc.exit_code)
    except KeyboardInterrupt:
        return _failed(args, "interrupted; re-run the same command to resume", 3)
    except OSError as exc:  # a file the user named: unreadable, vanished, a full disk
        if limit := machine_limit(exc):  # or no descriptor left to open it with
            return _failed(args, str(limit), limit.exit_code)
        where = f"{exc.filename}: " if exc.filename else ""
        return _failed(args, f"{where}{exc.strerror or type(exc).__name__}", 2)
    except Exception as exc:  # a bug: one line, not a traceback (BATCHER_DEBUG=1 shows it)
        if limit := machine_limit(exc):  # not a bug: a limit the machine set
            return _failed(args, str(limit), limit.exit_code)
        if os.environ.get("BATCHER_DEBUG"):
            raise
        return _failed(args, f"internal error ({type(exc).__name__}: "
                       f"{_redactor(args)(str(exc))[:300]}); nothing more was sent — re-run the "
                       "same command to resume, and report this with BATCHER_DEBUG=1 set for the "
                       "details", 3)


def _failed(args: argparse.Namespace | None, message: str, code: int) -> int:
    """Say why a command failed, as its flags asked: a line of text on stderr, or (``--log-format
    json``) a JSON object there, and with ``--json`` one on stdout too; returns ``code``."""
    sys.stderr.write(last_line(message, code,
                               json_lines=getattr(args, "log_format", "text") == "json"))
    if getattr(args, "json", False) and getattr(args, "command", None) == "run":
        print(json.dumps({"exit_code": code, "error": message}))
    return code


def entry(early: Sequence[int] = ()) -> NoReturn:
    """The ``batcher`` program. Its signals go to one stopper from its first line to its last:
    before :func:`main` takes them and after it gave them back, a signal is kept (exit 3)
    rather than a death by that signal or a traceback; once everything is said, they are
    ignored, and the process exits with the code said, without the interpreter's teardown.
    ``early``: the stop signals that came while the program was loading (:mod:`.program`)."""
    stopper = Stopper()
    handler = signal_handler(stopper)
    for sig in taken_signals():
        signal.signal(sig, handler)
    for sig in early[:1]:
        handler(sig, None)
    # where the scheduler put them — a pipe read by `head`, a full disk, `2>&-`, an ASCII
    # locale — they may fail; what the job did, and its exit code, stay as they are
    out = sys.stdout = Tolerant(sys.stdout, own_descriptor=True)  # type: ignore[assignment]
    sys.stderr = Tolerant(sys.stderr, own_descriptor=True)  # type: ignore[assignment]
    code = main(stopper=stopper)
    out.flush()
    if out.lost is not None and not out.broken_pipe:  # `| head`: what it did not want is no loss
        why = out.lost.strerror if isinstance(out.lost, OSError) else None
        sys.stderr.write(last_line(f"the standard output could not be written "
                                   f"({why or out.lost}); the exit code stands", code,
                                   json_lines=stopper.json_lines, event="stdout_lost"))
    sys.stderr.flush()
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # Everything is said, written and closed: the process ends here rather than in the
    # interpreter's teardown, where a thread a library left behind could still change the exit
    # code just said (an Arrow pool thread calling into a finalizing interpreter aborts it:
    # "Fatal Python error: PyGILState_Release", about once in a thousand runs) or hang it.
    os._exit(3 if stopper.requested is not None else code)


if __name__ == "__main__":  # pragma: no cover
    entry()
