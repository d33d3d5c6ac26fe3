"""`make screenshot`: the report of the sample job, pictured by headless chromium.

Runs `sample_data/offboarding.csv` against the bundled sandbox served on loopback — flaky (500s
and proxy pages) and allowing 2 calls at a time, so the picture shows retries and 429s — writes
its report and takes a 1280 × 2000 screenshot of it.

Run: .venv/bin/python scripts/report_screenshot.py [PNG]   (default docs/report.png)
Exits 2 when no chromium is installed (Debian: apt-get install chromium).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from batcher.htmlreport import report_path, write_report
from batcher.inputs import read_input
from batcher.job import RunSettings, run_job
from batcher.journal import Journal
from batcher.retry import RetryPolicy
from batcher.sandbox.config import SandboxConfig
from batcher.sandbox.serve import environment, running_sandbox
from batcher.sandbox.world import World

ROOT = Path(__file__).resolve().parent.parent
INPUT = Path("sample_data/offboarding.csv")
RESULTS = Path("out/sample/offboarding.csv")


def main() -> int:
    png = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/report.png").resolve()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("screenshot: no chromium on PATH (Debian: apt-get install chromium)",
              file=sys.stderr)
        return 2
    page = _sample_report()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="batcher-chromium-") as profile:
        subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox",
                        "--hide-scrollbars", f"--user-data-dir={profile}",
                        f"--screenshot={png}", "--window-size=1280,2000", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
    print(f"{png} ({png.stat().st_size:,} bytes): the report {page}")
    return 0


def _sample_report() -> Path:
    """Run the sample job afresh against the sandbox and write its report; returns the page."""
    results = ROOT / RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    for old in results.parent.glob(results.stem + ".*"):
        old.unlink()  # a fresh job, not a resume
    world = World.from_pairs(read_input(ROOT / INPUT).valid_pairs())
    config = SandboxConfig(fault_profile="flaky", seed=1, concurrency_limit=2, latency=0.05)
    with running_sandbox(world, config) as (base_url, _):
        result = run_job(RunSettings(input=ROOT / INPUT, results=results, concurrency=6,
                                     quiet=True, retry=RetryPolicy(base=0.05, max_wait=0.5)),
                         environment(base_url, config))
    with Journal.open(results.with_name(results.stem + ".journal"), None) as journal:
        return write_report(journal, result.summary, report_path(results),
                            command=f"batcher run {INPUT} --results {RESULTS}",
                            exit_code=result.exit_code)


if __name__ == "__main__":
    sys.exit(main())
