"""Overload over real HTTP: refused at once with 503 and Retry-After, while reads go on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.service import Service
from tests.helpers import WriteLockHolder, wait_until


@pytest.fixture
def service(tmp_path, monkeypatch) -> Iterator[Service]:
    monkeypatch.setenv("TASK_QUEUE_QUEUE_MAX_BACKLOG", "5")
    monkeypatch.setenv("TASK_QUEUE_SERVER_THREADS", "4")
    monkeypatch.setenv("TASK_QUEUE_SERVER_MAX_STALLED_SUBMITS", "2")
    monkeypatch.setenv("TASK_QUEUE_SERVER_STALL_MS", "100")
    monkeypatch.setenv("TASK_QUEUE_SERVER_SUBMIT_TIMEOUT_MS", "30000")
    monkeypatch.setenv("TASK_QUEUE_STORE_BUSY_TIMEOUT_MS", "30000")
    service = Service(str(tmp_path / "tasks.db"), tmp_path / "run.log", "--work-delay-ms", "5000", "--workers", "1")
    yield service.start()
    service.kill()


def assert_refused_at_once(service: Service, message: str) -> None:
    started = time.monotonic()
    status, answer, headers = service.call("POST", "/tasks", {"action": "x"})
    assert time.monotonic() - started < 1
    assert (status, headers["retry-after"]) == (503, "1")
    assert message in answer["error"]


def test_a_full_backlog_refuses_submits_at_once_and_reads_go_on(service):
    accepted = [service.submit({"action": "x"}) for _ in range(5)]

    assert_refused_at_once(service, "the queue is full")

    status, listing = service.request("GET", "/tasks")
    assert (status, sorted(t["id"] for t in listing["tasks"])) == (200, sorted(accepted))
    status, health = service.request("GET", "/health")
    assert (status, health["backlog"]) == (200, 5)


def test_submits_waiting_on_a_stuck_store_are_bounded_and_reads_go_on(service):
    lock = WriteLockHolder(service.db_path)
    answers: list[tuple[int, Any, dict[str, str]]] = []
    waiting = [
        threading.Thread(target=lambda: answers.append(service.call("POST", "/tasks", {"action": "x"})))
        for _ in range(2)
    ]
    try:
        for thread in waiting:
            thread.start()
        wait_until(lambda: service.request("GET", "/health")[1]["stalled_submits"] == 2, what="two stalled submits")

        assert_refused_at_once(service, "the store is not keeping up")
        assert service.request("GET", "/tasks")[0] == 200
    finally:
        lock.release()
        for thread in waiting:
            thread.join(30)

    assert [status for status, _, _ in answers] == [202, 202]
