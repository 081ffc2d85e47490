"""What the actors cost per task without HTTP, next to what one thread round trip costs.

    python -m bench.actors_only [--tasks 20000] [--threads 32] [--trials 5]

Each trial is a process of its own. "actors" starts the real system (SQLite file, store,
queue, two workers, work delay 0, metrics on and a log line per task written to a file, as
``run.py`` has them by default; the two trials after it turn the task log, then the metrics
too, off) and has ``--threads`` threads call ``TaskSystem.submit`` (the call the HTTP resource
makes) until ``--tasks`` tasks are committed, then waits for all of them to be completed in
the store. "round trip" is the yardstick: the same threads each hand a lock to one other
thread through a queue and wait for it to be released, the least two threads can do to pass
a request and its answer. Printed: CPU time (user and system)
and context switches of the whole process per task, median and best of the trials.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import queue
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from actors import start_system
from actors.db import utc_now
from actors.messages import NewTask
from api.logs import configure_logging
from conf import load_config
from tests.helpers import wait_until

Trial = Callable[[int, int], None]  # (tasks, threads) -> None


def in_threads(threads: int, each: int, work: Callable[[], None]) -> None:
    def loop() -> None:
        for _ in range(each):
            work()

    running = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()


def actors(tasks: int, threads: int, metrics: bool = True, task_log: bool = True) -> None:
    """The system as run.py runs it, logging to a file, with or without metrics and the task lines."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        db = str(Path(tmp) / "tasks.db")
        overrides: dict[str, dict[str, Any]] = {"store": {"path": db}, "workers": {"work_delay_ms": 0}}
        overrides |= {"metrics": {"enabled": metrics}, "log": {"tasks": task_log}}
        config = load_config(overrides=overrides)
        sys.setswitchinterval(config.server.switch_interval_us / 1_000_000)
        log = stack.enter_context((Path(tmp) / "log").open("w"))
        configure_logging(config.log, log)
        system = start_system(config)

        def submit() -> None:
            system.submit(NewTask(str(uuid.uuid4()), "uppercase", '{"text": "hello world"}', utc_now()))

        try:
            in_threads(threads, tasks // threads, submit)
            done = "SELECT COUNT(*) FROM tasks WHERE status = 'completed'"
            with contextlib.closing(sqlite3.connect(db)) as conn:
                wait_until(lambda: conn.execute(done).fetchone()[0] == tasks, timeout=600, what="the tasks to complete")
        finally:
            system.stop()


def round_trip(tasks: int, threads: int) -> None:
    requests: queue.SimpleQueue[threading.Lock | None] = queue.SimpleQueue()

    def serve() -> None:
        while (answer := requests.get()) is not None:
            answer.release()

    def ask() -> None:
        answer = threading.Lock()
        answer.acquire()
        requests.put(answer)
        answer.acquire()

    server = threading.Thread(target=serve)
    server.start()
    in_threads(threads, tasks // threads, ask)
    requests.put(None)
    server.join()


TRIALS: dict[str, Trial] = {
    "round trip": round_trip,
    "actors": actors,
    "actors, no task log": functools.partial(actors, task_log=False),
    "actors, no metrics or task log": functools.partial(actors, metrics=False, task_log=False),
}


def run_trials(names: list[str], tasks: int, threads: int, trials: int) -> dict[str, list[dict[str, float]]]:
    """Each trial in a process of its own, the kinds taking turns so that all see the same noise."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for _ in range(trials):
        for name in names:
            command = [sys.executable, "-m", "bench.actors_only", "--trial", name, "--tasks", str(tasks)]
            out = subprocess.run([*command, "--threads", str(threads)], capture_output=True, check=True)
            results[name].append(orjson.loads(out.stdout.splitlines()[-1]))
    return results


def run_trial(name: str, tasks: int, threads: int) -> None:
    """In this process: run one trial and print its CPU and context switches per task as JSON."""
    tasks -= tasks % threads
    before = resource.getrusage(resource.RUSAGE_SELF)
    TRIALS[name](tasks, threads)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    switches = (after.ru_nvcsw + after.ru_nivcsw) - (before.ru_nvcsw + before.ru_nivcsw)
    print(orjson.dumps({"cpu_us": cpu_s / tasks * 1e6, "switches": switches / tasks}).decode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--trial", choices=TRIALS, help=argparse.SUPPRESS)  # one trial, in this process
    args = parser.parse_args()
    if args.trial:
        run_trial(args.trial, args.tasks, args.threads)
        return

    results = run_trials(list(TRIALS), args.tasks, args.threads, args.trials)

    yardstick = statistics.median(r["cpu_us"] for r in results["round trip"])
    rows = [("", "CPU per task", "context switches per task", "CPU in round trips")]
    for name, runs in results.items():
        cpu = [r["cpu_us"] for r in runs]
        switches = [r["switches"] for r in runs]
        rows.append(
            (
                name,
                f"{statistics.median(cpu):.0f} us ({min(cpu):.0f} us)",
                f"{statistics.median(switches):.1f} ({min(switches):.1f})",
                f"{statistics.median(cpu) / yardstick:.1f}",
            )
        )
    print(f"{args.tasks:,} tasks from {args.threads} threads, {args.trials} trials: median (best)")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
