"""End-to-end throughput: submit tasks over real HTTP and time until every one is completed.

    python -m bench.throughput [--tasks 5000] [--clients 16] [--work-delay-ms 0] [--workers 2]

Starts ``python run.py`` as its own process on a free port with a temporary database,
submits ``--tasks`` tasks from ``--clients`` keep-alive connections, and prints a table:
the submit rate (every 202 is a committed task), submit latency percentiles, and the
completion rate from the first submit to the last task completed.
"""

from __future__ import annotations

import argparse
import http.client
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from tests.e2e.service import Service

BODIES = [
    orjson.dumps({"action": "uppercase", "data": {"text": "hello world"}}),
    orjson.dumps({"action": "sum", "data": {"numbers": [1, 2, 3, 4]}}),
    orjson.dumps({"action": "send_email", "data": {"to": "a@example.com"}}),
]


def submit_all(url: str, count: int, latencies: list[float]) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    for n in range(count):
        started = time.perf_counter()
        conn.request("POST", "/tasks", BODIES[n % 3], {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 202:
            raise RuntimeError(f"POST /tasks answered {response.status}")
        latencies.append(time.perf_counter() - started)
    conn.close()


def completed(db_path: str) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM tasks WHERE status = 'completed'").fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--work-delay-ms", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db_path = str(Path(tmp) / "tasks.db")
        flags = ("--work-delay-ms", str(args.work_delay_ms), "--workers", str(args.workers))
        service = Service(db_path, Path(tmp) / "service.log", *flags).start()
        try:
            per_client = args.tasks // args.clients
            total = per_client * args.clients
            latencies: list[float] = []
            threads = [
                threading.Thread(target=submit_all, args=(service.url, per_client, latencies))
                for _ in range(args.clients)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            submitted = time.perf_counter() - started
            while completed(db_path) < total:
                time.sleep(0.05)
            finished = time.perf_counter() - started
        finally:
            service.stop()

    quantiles = statistics.quantiles(latencies, n=100)
    rows = [
        ("tasks", f"{total}"),
        ("clients", f"{args.clients}"),
        ("work delay", f"{args.work_delay_ms} ms x {args.workers} workers"),
        ("submit rate (202 = committed)", f"{total / submitted:,.0f} tasks/s"),
        ("submit latency p50 / p95", f"{quantiles[49] * 1000:.1f} / {quantiles[94] * 1000:.1f} ms"),
        ("end-to-end completion rate", f"{total / finished:,.0f} tasks/s"),
        ("all completed after", f"{finished:.2f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
