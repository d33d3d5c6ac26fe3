"""Executor benchmark: throughput against a limited sandbox, CPU per call, memory vs job size.

Run: .venv/bin/python bench/bench_executor.py [--big 1000000] [--small 100000]

The sandbox runs in its own process (concurrency limit 10, 50 ms per call: 200 calls/s at most);
`batcher run` runs as a subprocess so its peak memory and CPU are its own. Prints the figures, the
ratio against a plain sequential client measured in the same run, and PASS/FAIL per target.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
LIMIT, LATENCY = 10, 0.05
SERVER_RATE = LIMIT / LATENCY
CADENCES = [str(554023000004000000 + j) for j in range(5)]

SERVER = """
import sys
from batcher.sandbox.config import SandboxConfig
from batcher.sandbox.serve import serve
from batcher.sandbox.world import World
from batcher.inputs import read_input

pairs = []
for path in sys.argv[4:]:
    pairs.extend(read_input(path).valid_pairs())
cfg = SandboxConfig(concurrency_limit=int(sys.argv[2]), latency=float(sys.argv[3]))
sys.exit(serve(World.from_pairs(pairs), cfg, port=int(sys.argv[1])))
"""


def make_input(path: Path, records: int, base: int) -> Path:
    """`records` records, each in the same 5 cadences: records*5 pairs, records/100 calls."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fh.write("module,record_id,cadence_id\n")
        for i in range(records):
            rid = base + i
            fh.writelines(f"Leads,{rid},{c}\n" for c in CADENCES)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("sandbox did not start")


def env_for(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return dict(os.environ, ZOHO_API_DOMAIN=url, ZOHO_ACCOUNTS_URL=url,
                ZOHO_CLIENT_ID="sandbox-client-id", ZOHO_CLIENT_SECRET="sandbox-client-secret",
                ZOHO_REFRESH_TOKEN="sandbox-refresh-token")


def run_job(inp: Path, port: int, workdir: Path) -> dict:
    results = workdir / f"{inp.stem}.csv"
    cmd = [str(ROOT / ".venv" / "bin" / "batcher"), "run", str(inp), "--results", str(results),
           "--concurrency", str(LIMIT), "--quiet", "--no-preflight"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env_for(port))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    summary = json.loads((workdir / f"{inp.stem}.summary.json").read_text())
    return {"exit": os.waitstatus_to_exitcode(status), "wall_s": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "summary": summary}


def sequential_baseline(port: int, calls: int, base: int) -> float:
    """A plain script: one token, one call after another. Calls per second."""
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=10) as client:
        token = client.post(f"{url}/oauth/v2/token", data={
            "grant_type": "refresh_token", "client_id": "sandbox-client-id",
            "client_secret": "sandbox-client-secret",
            "refresh_token": "sandbox-refresh-token"}).json()["access_token"]
        headers = {"Authorization": f"Zoho-oauthtoken {token}"}
        start = time.monotonic()
        for i in range(calls):
            ids = [str(base + i * 100 + k) for k in range(100)]
            r = client.post(f"{url}/crm/v7/Leads/actions/unenrol_from_cadences",
                            json={"cadences_ids": CADENCES, "ids": ids}, headers=headers)
            r.raise_for_status()
        return calls / (time.monotonic() - start)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=1_000_000, help="pairs of the large job")
    ap.add_argument("--small", type=int, default=100_000, help="pairs of the small job")
    ap.add_argument("--baseline-calls", type=int, default=60)
    args = ap.parse_args()
    # the record range is in the name: the same size as "big" in one run and "small" in another
    # must not share a file, or the second job finds its pairs already un-enrolled
    big = make_input(DATA / f"exec_{args.big}_b.csv", args.big // 5, 554023000100000000)
    small = make_input(DATA / f"exec_{args.small}_s.csv", args.small // 5, 554023000300000000)
    seq = make_input(DATA / f"exec_seq_{args.baseline_calls}.csv", args.baseline_calls * 100,
                     554023000500000000)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(LIMIT), str(LATENCY),
                               str(big), str(small), str(seq)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(port)
        baseline = sequential_baseline(port, args.baseline_calls, 554023000500000000)
        with tempfile.TemporaryDirectory() as tmp:
            jobs = {name: run_job(inp, port, Path(tmp)) for name, inp in
                    (("small", small), ("big", big))}
    finally:
        server.terminate()
        server.wait(10)

    print(f"server limit: {LIMIT} concurrent x {LATENCY * 1000:.0f} ms = {SERVER_RATE:.0f} calls/s")
    print(f"sequential plain client: {baseline:.1f} calls/s")
    ok = True
    for name, job in jobs.items():
        s = job["summary"]
        send_s = s.get("extra", {}).get("send_s") or s["duration_s"]
        rate = s["calls"] / send_s if send_s else 0.0
        print(f"{name}: {s['rows']:,} pairs, {s['calls']:,} calls, exit {job['exit']}, "
              f"wall {job['wall_s']:.1f} s, sending {send_s:.1f} s = {rate:.1f} calls/s "
              f"({rate / SERVER_RATE:.0%} of the server's limit, {rate / baseline:.1f}x the "
              f"sequential client), 429s {s['throttled']}, retries {s['retries']}, "
              f"CPU {job['cpu_s'] / max(s['calls'], 1) * 1000:.2f} ms/call (whole process), "
              f"peak RSS {job['peak_rss_mb']:.0f} MB")
        print(f"  {s['reconcile']}")
        ok &= job["exit"] == 0 and s["reconciled"]
    big_job = jobs["big"]["summary"]
    big_rate = big_job["calls"] / (big_job.get("extra", {}).get("send_s") or big_job["duration_s"])
    throughput_ok = big_job["calls"] >= 2000 and big_rate >= 0.9 * SERVER_RATE
    mem_ratio = jobs["big"]["peak_rss_mb"] / jobs["small"]["peak_rss_mb"]
    print(f"throughput target (>= 2000 calls at >= 90% of {SERVER_RATE:.0f}/s): "
          f"{'PASS' if throughput_ok else 'FAIL'} ({big_rate / SERVER_RATE:.0%})")
    print(f"memory target (big/small peak <= 1.5x): {'PASS' if mem_ratio <= 1.5 else 'FAIL'} "
          f"({mem_ratio:.2f}x)")
    print(f"no pair lost: {'PASS' if ok else 'FAIL'}")
    return 0 if (ok and throughput_ok and mem_ratio <= 1.5) else 1


if __name__ == "__main__":
    sys.exit(main())
