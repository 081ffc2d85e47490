"""What a lasting store fault costs: CPU and log lines while the database cannot be written.

    python -m bench.fault_storm [--seconds 10]

Starts ``python run.py``, lets a task start (so a status update is waiting to be written),
then makes the database and its WAL read-only even for root (``chattr +i``) for
``--seconds``, and measures the process's CPU time and what it logged meanwhile; then
makes them writable again and measures how long the service takes to write again (``/health``
back to 200) and to finish the task. Needs root and a filesystem with attributes, as CI has.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.e2e.service import Service
from tests.helpers import set_immutable, wait_until


def measure(workdir: Path, seconds: float) -> list[tuple[str, str]]:
    db = str(workdir / "tasks.db")
    service = Service(db, workdir / "run.log", "--work-delay-ms", "1000", "--workers", "1").start()
    files = [db, db + "-wal"]
    try:
        task_id = service.submit({"action": "x"})
        wait_until(lambda: service.request("GET", f"/tasks/{task_id}")[1]["status"] == "running", what="the task")
        set_immutable(files, True)
        try:
            cpu, log_bytes = service.cpu_seconds(), len(service.log())
            time.sleep(seconds)  # the span measured: how much the fault costs while it lasts
            cpu, log_bytes = service.cpu_seconds() - cpu, len(service.log()) - log_bytes
            status, health = service.request("GET", "/health")
            lines = [line for line in service.log().splitlines() if "actors.store" in line]
        finally:
            set_immutable(files, False)
        cleared = time.monotonic()
        wait_until(lambda: service.request("GET", "/health")[0] == 200, what="/health to be 200 again")
        healthy_in = time.monotonic() - cleared
        task = service.wait_finished(task_id)
    finally:
        service.shut()
        set_immutable(files, False)
    return [
        ("fault lasted", f"{seconds:g} s"),
        ("CPU used meanwhile", f"{cpu:.2f} s ({100 * cpu / seconds:.1f}% of a core)"),
        ("logged meanwhile", f"{log_bytes} bytes, {len(lines)} store lines"),
        ("/health meanwhile", f"{status} {health.get('error', '')}"),
        ("/health 200 again after", f"{healthy_in:.2f} s"),
        ("the task", f"{task['status']} after {task['attempts']} attempt(s)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(Path(tmp), args.seconds)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
