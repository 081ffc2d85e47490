"""The distributed mode's benchmark: 1 instance embedded, 1 and 2 instances on PostgreSQL and RabbitMQ.

    python -m bench.distributed [--seconds 10] [--connections 16] [--smoke]

Each setting gets the same load: wrk posting tasks (work_delay_ms 0) for ``--seconds`` over
``--connections`` connections, split across the instances. It reports submits/s, completions/s
while the load ran and after it (the backlog left, worked off without submits competing), p95
submit, and the CPU each process spent per task from the start of the
load until every task was done: each instance, RabbitMQ (its Erlang VM) and PostgreSQL (all its
processes). The embedded setting is the baseline of the same run (ratios: the machine is
noisy). PostgreSQL and RabbitMQ are this machine's (tests/servers.py: a schema and a queue of
the benchmark's own, removed afterwards).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench.tools import Load, require, wrk
from tests.e2e.service import Service
from tests.helpers import query
from tests.servers import AMQP_URL, postgres_schema, rabbitmq_queue

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far (those that have ended count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def pids_of(pattern: str) -> list[int]:
    """The processes whose command line matches ``pattern`` (pgrep -f)."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in found.split()]


POLL_S = 0.2  # how often the benchmark looks whether every task is done (it shares the machine it measures)


def completed(database: str) -> int:
    """Tasks completed in the SQLite file or PostgreSQL URL ``database``, from the counts the store keeps (a
    ``COUNT(*)`` of the tasks, polled, would itself load the database it measures)."""
    rows = query(database, "SELECT COALESCE(SUM(n), 0) AS n FROM task_counts WHERE status = 'completed'")
    return int(rows[0]["n"])


def wait_for(count_done: Callable[[], int], target: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while count_done() < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {target} tasks to complete")
        time.sleep(POLL_S)


def load_all(instances: list[Service], seconds: float, connections: int) -> Load:
    """wrk against every instance at once, the connections split among them; their loads summed."""
    loads: list[Load] = []
    threads = [
        threading.Thread(target=lambda i=i: loads.append(wrk(i.url + "/tasks", seconds, connections // len(instances))))
        for i in instances
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests = sum(load.requests for load in loads)
    return Load(requests, sum(load.errors for load in loads), max(load.seconds for load in loads), 0.0,
                max(load.p95_ms for load in loads))  # fmt: skip


def run(
    name: str, instances: list[Service], count_done: Callable[[], int], seconds: float, connections: int
) -> list[str]:
    """One setting's row: submits/s, completed/s under load, p95, CPU per task of each process."""
    processes = {f"instance {n + 1}": [i.process.pid] for n, i in enumerate(instances)}  # type: ignore[union-attr]
    if name != "embedded":
        processes["RabbitMQ"] = pids_of("beam.smp")
        processes["PostgreSQL"] = pids_of("postgres")
    before = {label: cpu_seconds(pids) for label, pids in processes.items()}
    done_before = count_done()
    load = load_all(instances, seconds, connections)
    done_under_load = count_done() - done_before
    drain_started, left = time.monotonic(), load.requests - done_under_load
    wait_for(count_done, done_before + load.requests)
    drained_per_s = left / max(time.monotonic() - drain_started, 1e-3)
    cpu = {label: (cpu_seconds(pids) - before[label]) / load.requests * 1e6 for label, pids in processes.items()}
    return [
        name,
        f"{load.rate:,.0f}/s",
        f"{done_under_load / load.seconds:,.0f}/s",
        f"{drained_per_s:,.0f}/s" if left > 100 else "-",
        f"{load.p95_ms:.1f} ms",
        f"{load.errors}",
        ", ".join(f"{label} {us:.0f}" for label, us in cpu.items()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="small and short, to check that the benchmark runs")
    args = parser.parse_args()
    seconds, connections = (2, 4) if args.smoke else (args.seconds, args.connections)
    require("wrk")
    rows = []
    with tempfile.TemporaryDirectory(prefix="task-queue-distributed-") as tmp:
        workdir = Path(tmp)
        db = workdir / "embedded.db"
        with ExitStack() as stack:
            embedded = Service(str(db), workdir / "embedded.log", "--work-delay-ms", "0").start(timeout=120)
            stack.callback(embedded.shut)
            rows.append(run("embedded", [embedded], functools.partial(completed, str(db)), seconds, connections))
        for count in (1, 2):
            with ExitStack() as stack:
                url = stack.enter_context(postgres_schema())
                queue = stack.enter_context(rabbitmq_queue())
                env = {"TASK_QUEUE_STORE_URL": url, "TASK_QUEUE_QUEUE_URL": AMQP_URL, "TASK_QUEUE_QUEUE_NAME": queue}
                instances = []
                for n in range(count):
                    log = workdir / f"distributed-{count}-{n}.log"
                    instance = Service(str(db), log, "--work-delay-ms", "0", env=env).start(timeout=120)
                    stack.callback(instance.shut)
                    instances.append(instance)
                name = f"distributed, {count} instance{'s' * (count > 1)}"
                rows.append(run(name, instances, functools.partial(completed, url), seconds, connections))
    header = ["setting", "submits", "completed under load", "after it", "p95 submit", "errors", "CPU per task (us)"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
