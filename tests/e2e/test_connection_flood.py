"""A flood of idle and slow-header connections does not lock normal clients out."""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.service import Service
from tests.helpers import wait_until

IDLE = 3000
SLOW_HEADERS = 1100
CLIENT_TIMEOUT_S = 5  # waitress would keep a locked-out client waiting for its 120 s channel timeout


@pytest.fixture
def open_files_limit() -> Iterator[None]:
    """This test process holds over 4,000 sockets: raise its own limit for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE + SLOW_HEADERS + 500:
        pytest.fail(f"the open files hard limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_normal_client_is_served_while_thousands_of_idle_and_slow_connections_are_open(
    tmp_path, open_files_limit, capsys
):
    service = Service(str(tmp_path / "tasks.db"), tmp_path / "run.log", "--work-delay-ms", "0").start()
    flood: list[socket.socket] = []
    try:
        host, port = service.url.removeprefix("http://").rsplit(":", 1)
        for _ in range(IDLE):
            flood.append(socket.create_connection((host, int(port))))
        for _ in range(SLOW_HEADERS):  # a request that never finishes its headers
            slow = socket.create_connection((host, int(port)))
            slow.sendall(b"POST /tasks HTTP/1.1\r\nHost: x\r\n")
            flood.append(slow)
        assert service.process is not None
        served = f"/proc/{service.process.pid}/fd"
        wait_until(lambda: len(os.listdir(served)) > IDLE + SLOW_HEADERS, timeout=60, what="the server to take them")

        started = time.monotonic()
        status, accepted, _ = service.call("POST", "/tasks", {"action": "x"}, timeout=CLIENT_TIMEOUT_S)
        submitted_in = time.monotonic() - started
        started = time.monotonic()
        read, task, _ = service.call("GET", f"/tasks/{accepted['id']}", timeout=CLIENT_TIMEOUT_S)
        read_in = time.monotonic() - started
    finally:
        for connection in flood:
            connection.close()
        service.kill()

    assert (status, read, task["id"]) == (202, 200, accepted["id"])
    assert submitted_in < 1 and read_in < 1, "the issue's bound: served within a second"
    with capsys.disabled():
        print(
            f"\nwith {IDLE} idle and {SLOW_HEADERS} slow-header connections open: submit {submitted_in * 1000:.0f} ms,"
            f" read {read_in * 1000:.0f} ms"
        )
