"""The database file under a real process: deleted while it runs, or damaged before it starts."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.e2e.service import ROOT, Service
from tests.helpers import damage


def test_a_database_file_deleted_while_running_stops_the_process_with_exit_code_1(tmp_path):
    db = str(tmp_path / "tasks.db")
    service = Service(db, tmp_path / "run.log", "--work-delay-ms", "0").start()
    try:
        service.wait_finished(service.submit({"action": "x"}))
        for path in (db, db + "-wal", db + "-shm"):
            os.remove(path)

        status, answer = service.request("POST", "/tasks", {"action": "x"})

        assert (status, answer["error"]) == (503, "the database file was deleted or replaced; the task was not stored")
        assert service.process is not None
        assert service.process.wait(10) == 1
    finally:
        service.kill()
    assert "was deleted or replaced while in use" in service.log()
    assert "CRITICAL task_queue: the store actor is not running; stopping" in service.log()


def test_a_damaged_database_file_stops_the_start_with_the_error_and_what_to_do(tmp_path):
    db = str(tmp_path / "tasks.db")
    service = Service(db, tmp_path / "run.log", "--work-delay-ms", "0").start()
    try:
        ids = [service.submit({"action": "x", "data": {"text": "x" * 300}}) for _ in range(200)]
        service.wait_finished(ids[-1])
        assert service.stop() == 0  # a clean stop checkpoints every page into the file
    finally:
        service.kill()
    damage(db)

    again = subprocess.run(
        [sys.executable, "run.py", "--port", "0", "--db", db],
        cwd=ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )

    assert again.returncode == 1
    assert f"the database file {db} is damaged: *** in database main ***; Page " in again.stderr
    assert "restore it from a backup" in again.stderr
    assert f"`sqlite3 {db} .recover`" in again.stderr
    assert "ready on" not in again.stderr
