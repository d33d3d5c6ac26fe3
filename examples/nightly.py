"""A nightly offboarding job under Airflow: the library in a PythonOperator, or the command line
in a BashOperator. Both treat the exit codes the same way:

- 0: every row ended well; 1: the job finished but some rows are failed or invalid (the retry
  file and the report say which): the task succeeds, the rows are for a person to look at;
- 2: the input or the flags are wrong: fail, do not retry (nothing was sent);
- 3: aborted (credentials, Zoho down, a signal, a budget): fail and let Airflow retry — the same
  command resumes the job from its journal.

Without Airflow installed this file still imports (the DAG is only built when it is), so the
callables can be tested on their own.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from batcher.errors import BatcherError
from batcher.job import RunSettings, run_job

INPUT = os.environ.get("OFFBOARD_INPUT", "/srv/offboarding/leavers.csv")
RESULTS = os.environ.get("OFFBOARD_RESULTS", "/srv/offboarding/out/{date}.csv")

#: the BashOperator's command: exit 1 (rows to look at) is a success for the task
BASH_COMMAND = ('batcher run "$OFFBOARD_INPUT" --results "$OFFBOARD_RESULTS" '
                '--log-format json; rc=$?; if [ "$rc" -eq 1 ]; then exit 0; fi; exit "$rc"')


class JobFailed(RuntimeError):
    """Raised for exit codes 2 and 3, so the task fails (and, for 3, is retried)."""


def offboard(input_path: str = INPUT, results: str = RESULTS,
             env: dict[str, str] | None = None) -> dict:
    """The PythonOperator's callable: runs (or resumes) the job; returns the summary (pushed to
    XCom); raises JobFailed for exit codes 2 and 3."""
    try:
        result = run_job(RunSettings(input=input_path, results=results, quiet=True),
                         env if env is not None else dict(os.environ))
    except BatcherError as exc:  # raised before anything was sent (a bad input: exit 2)
        raise JobFailed(f"batcher exit {exc.exit_code}: {exc}") from None
    if result.exit_code >= 2:
        raise JobFailed(f"batcher exit {result.exit_code}: {result.aborted or 'see its log'}")
    return result.summary.to_dict()


try:  # pragma: no cover - only where Airflow is installed
    from airflow import DAG
    from airflow.operators.bash import BashOperator
    from airflow.operators.python import PythonOperator
except ImportError:  # the callables above stay usable and testable
    DAG = None

if DAG is not None:  # pragma: no cover
    with DAG("offboarding", start_date=datetime(2026, 1, 1), schedule="15 2 * * *",
             catchup=False, default_args={"retries": 3, "retry_delay": timedelta(minutes=15)}):
        PythonOperator(task_id="unenrol_library", python_callable=offboard)
        BashOperator(task_id="unenrol_cli", bash_command=BASH_COMMAND,
                     env={"OFFBOARD_INPUT": INPUT, "OFFBOARD_RESULTS": RESULTS},
                     append_env=True)
