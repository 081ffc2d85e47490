"""One process per database: a second one exits 1 at once, and a port that is taken is found
before the database is touched."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import DatabaseInUse, start_system
from tests.e2e.service import ROOT, Service
from tests.helpers import wait_until


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()


def run_once(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run.py", *flags], cwd=ROOT, capture_output=True, check=False, text=True, timeout=30
    )


def test_a_second_process_on_the_same_database_exits_1_naming_the_pid_and_leaves_the_first_alone(services, tmp_path):
    db = str(tmp_path / "tasks.db")
    first = Service(db, tmp_path / "first.log", "--work-delay-ms", "1500", "--workers", "1").start()
    services.append(first)
    task_id = first.submit({"action": "uppercase", "data": {"text": "once"}})
    wait_until(lambda: first.request("GET", f"/tasks/{task_id}")[1]["status"] == "running", what="the task to run")

    second = run_once("--port", "0", "--db", db)

    assert second.returncode == 1
    assert first.process is not None
    assert f"is in use by PID {first.process.pid}" in second.stderr
    assert "ready on" not in second.stderr
    task = first.wait_finished(task_id)
    assert (task["status"], task["attempts"]) == ("completed", 1), "the second process recovered nothing"
    status, health = first.request("GET", "/health")
    assert (status, health["backlog"]) == (200, 0)


def test_a_database_left_locked_by_a_killed_process_starts_again(services, tmp_path):
    db = str(tmp_path / "tasks.db")
    first = Service(db, tmp_path / "first.log").start()
    services.append(first)
    first.stop(signal.SIGKILL)

    again = Service(db, tmp_path / "again.log").start()
    services.append(again)

    assert again.request("GET", "/health")[0] == 200
    assert again.stop() == 0


def test_a_port_that_is_taken_stops_the_start_before_the_database_is_touched(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    db = tmp_path / "never" / "tasks.db"
    try:
        process = run_once("--port", str(taken.getsockname()[1]), "--db", str(db))
    finally:
        taken.close()

    assert process.returncode == 1
    assert "cannot listen on 127.0.0.1" in process.stderr
    assert "Address already in use" in process.stderr
    assert not db.parent.exists(), "neither the database nor its lock was created"


def test_two_systems_in_one_process_cannot_share_a_database(config):
    system = start_system(config)
    try:
        with pytest.raises(DatabaseInUse, match=f"in use by PID {os.getpid()}"):
            start_system(config)
        assert system.problem() is None, "the first system goes on"
    finally:
        system.stop()
    start_system(config).stop()  # stopping released the lock


def test_the_ready_line_shows_the_database_as_an_absolute_path_and_ipv6_in_brackets(services, tmp_path):
    if not socket.has_ipv6:
        pytest.fail("this machine has no IPv6 loopback")
    relative = os.path.relpath(tmp_path / "tasks.db", ROOT)
    service = Service(relative, tmp_path / "run.log", "--host", "::1").start()
    services.append(service)

    assert service.url.startswith("http://[::1]:")
    assert f"database {Path(tmp_path / 'tasks.db').resolve()}" in service.log()
    assert service.request("GET", "/health")[0] == 200
