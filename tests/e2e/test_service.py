"""End to end: ``python run.py`` as a subprocess, real HTTP, SIGTERM, SIGKILL and restarts."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.service import ROOT, Service
from tests.helpers import WriteLockHolder, wait_until

TUTORIAL_TASKS = [
    ({"action": "uppercase", "data": {"text": "hello world"}}, {"output": "HELLO WORLD"}),
    ({"action": "sum", "data": {"numbers": [1, 2, 3, 4]}}, {"output": 10}),
    ({"action": "send_email", "data": {"to": "a@example.com"}}, {"output": "processed"}),
]


@pytest.fixture
def services(tmp_path) -> Iterator[list[Service]]:
    """Services a test starts; any still running at the end is killed."""
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()


def start(services: list[Service], tmp_path, *flags: str) -> Service:
    service = Service(str(tmp_path / "data" / "tasks.db"), tmp_path / f"run{len(services)}.log", *flags)
    services.append(service)
    return service.start()


def listener_closed(service: Service) -> bool:
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_tasks_complete_and_survive_a_restart(services, tmp_path):
    service = start(services, tmp_path, "--work-delay-ms", "0")
    status, health = service.request("GET", "/health")
    assert (status, health["status"], health["workers"], health["backlog"]) == (200, "ok", 2, 0)
    ids = [service.submit(body) for body, _ in TUTORIAL_TASKS]
    for task_id, (_, result) in zip(ids, TUTORIAL_TASKS, strict=True):
        task = service.wait_finished(task_id)
        assert (task["status"], task["result"]) == ("completed", result)

    assert service.stop() == 0
    assert "stopped" in service.log()

    again = start(services, tmp_path, "--work-delay-ms", "0")
    status, listing = again.request("GET", "/tasks?status=completed")
    assert status == 200
    assert [t["id"] for t in listing["tasks"]] == ids[::-1]
    assert [t["result"] for t in listing["tasks"]] == [r for _, r in TUTORIAL_TASKS][::-1]
    assert again.stop() == 0


def test_tasks_left_unfinished_by_a_crash_are_done_after_the_restart(services, tmp_path):
    slow = start(services, tmp_path, "--work-delay-ms", "2000", "--workers", "1")
    ids = [slow.submit(body) for body, _ in TUTORIAL_TASKS]
    wait_until(lambda: slow.request("GET", "/tasks?status=running")[1]["count"] > 0, what="a task to be running")

    slow.stop(signal.SIGKILL)

    fast = start(services, tmp_path, "--work-delay-ms", "0")
    tasks = [fast.wait_finished(task_id) for task_id in ids]
    assert [(t["status"], t["result"]) for t in tasks] == [("completed", r) for _, r in TUTORIAL_TASKS]
    assert max(t["attempts"] for t in tasks) == 2, "the tasks interrupted by the kill ran again"
    assert fast.stop() == 0


def test_sigterm_lets_tasks_in_flight_finish_and_exits_0(services, tmp_path):
    service = start(services, tmp_path, "--work-delay-ms", "300")
    ids = [service.submit({"action": "uppercase", "data": {"text": str(n)}}) for n in range(4)]
    wait_until(lambda: service.request("GET", "/tasks?status=running")[1]["count"] > 0, what="tasks running")

    assert service.stop(timeout=10) == 0

    again = start(services, tmp_path, "--work-delay-ms", "0")
    assert {again.wait_finished(i)["status"] for i in ids} == {"completed"}
    assert again.stop() == 0


def test_two_signals_at_once_stop_the_service_once_and_cleanly(services, tmp_path):
    service = start(services, tmp_path)
    assert service.process is not None
    for _ in range(2):  # as `kill` and a process manager might, one right after the other
        service.process.send_signal(signal.SIGTERM)

    assert service.process.wait(10) == 0
    log = service.log()
    assert log.count("received SIGTERM, stopping") == 1
    assert "Traceback" not in log


def test_when_the_store_dies_the_process_stops_loudly_with_exit_code_1(services, tmp_path, monkeypatch):
    monkeypatch.setenv("TASK_QUEUE_WORKERS_IMPORTS", "tests.e2e.sabotage")
    service = start(services, tmp_path, "--work-delay-ms", "0")

    service.submit({"action": "stop_the_store"})

    assert service.process is not None
    assert service.process.wait(10) == 1
    assert "CRITICAL task_queue: the store actor is not running; stopping" in service.log()


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--workers", "0"], 2, "invalid value for workers.count"),
        (["--db", "/dev/null/tasks.db"], 1, "start-up failed"),
    ],
)
def test_a_bad_start_exits_non_zero_with_the_reason(flags, code, message):
    process = subprocess.run(
        [sys.executable, "run.py", "--port", "0", *flags],
        cwd=ROOT,
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )

    assert process.returncode == code
    assert message in process.stderr


def test_after_sigterm_new_connections_are_refused_while_the_workers_finish(services, tmp_path):
    service = start(services, tmp_path, "--work-delay-ms", "3000", "--workers", "1")
    task_id = service.submit({"action": "uppercase", "data": {"text": "last"}})
    wait_until(lambda: service.request("GET", f"/tasks/{task_id}")[1]["status"] == "running", what="the task to run")
    assert service.process is not None

    service.process.send_signal(signal.SIGTERM)

    wait_until(lambda: listener_closed(service), what="the listener to close")
    assert service.process.poll() is None, "still running: the worker finishes its task first"
    assert service.process.wait(10) == 0
    again = start(services, tmp_path, "--work-delay-ms", "0")
    task = again.wait_finished(task_id)
    assert (task["status"], task["attempts"]) == ("completed", 1)


def test_a_submit_in_progress_at_sigterm_gets_its_answer_before_the_connection_closes(services, tmp_path, monkeypatch):
    monkeypatch.setenv("TASK_QUEUE_STORE_BUSY_TIMEOUT_MS", "30000")  # the store waits for the lock, not refuses
    service = start(services, tmp_path, "--work-delay-ms", "0")
    lock = WriteLockHolder(service.db_path)  # the submit waits for its commit behind this lock
    answers: list[tuple[int, Any, dict[str, str]]] = []
    submit = threading.Thread(target=lambda: answers.append(service.call("POST", "/tasks", {"action": "x"})))
    try:
        submit.start()
        wait_until(lambda: service.request("GET", "/health")[1]["pending_submits"] == 1, what="the submit to wait")
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        wait_until(lambda: listener_closed(service), what="the listener to close")
    finally:
        lock.release()  # the commit goes through while the service stops
    submit.join(30)

    status, answer, headers = answers[0]
    assert (status, headers["connection"]) == (202, "close")
    assert service.process.wait(10) == 0
    again = start(services, tmp_path, "--work-delay-ms", "0")
    assert again.wait_finished(answer["id"])["status"] == "completed"


def test_an_idempotency_key_holds_across_a_restart(services, tmp_path):
    service = start(services, tmp_path, "--work-delay-ms", "0")
    key = {"Idempotency-Key": "invoice-2026-12-001"}
    body = {"action": "uppercase", "data": {"text": "x"}}
    status, first, _ = service.call("POST", "/tasks", body, headers=key)
    assert status == 202
    assert service.stop() == 0

    again = start(services, tmp_path, "--work-delay-ms", "0")
    status, replayed, headers = again.call(
        "POST", "/tasks", {"action": "uppercase", "data": {"text": "x"}}, headers=key
    )

    assert (status, replayed["id"], headers["idempotent-replayed"]) == (202, first["id"], "true")
    assert again.request("GET", "/tasks")[1]["count"] == 1


def test_json_logs_give_one_object_per_line_with_the_task_fields(services, tmp_path):
    service = Service(
        str(tmp_path / "data" / "tasks.db"), tmp_path / "json.log", "--work-delay-ms", "0",
        env={"TASK_QUEUE_LOG_FORMAT": "json", "TASK_QUEUE_LOG_REQUESTS": "true"},
    )  # fmt: skip
    services.append(service)
    service.start()
    task_id = service.submit({"action": "uppercase", "data": {"text": "hi"}})
    service.wait_finished(task_id)
    assert service.stop() == 0

    lines = [json.loads(line) for line in service.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    messages = [line["message"] for line in lines]
    assert any(message.startswith("actions: sum, uppercase") for message in messages)
    finished = [line for line in lines if line.get("task_id") == task_id]
    assert [(line["outcome"], line["attempt"], line["action"]) for line in finished] == [("completed", 1, "uppercase")]
    assert any(line.get("method") == "POST" and line.get("status") == 202 for line in lines), "the request log"


def test_help_documents_every_setting_and_its_variable():
    done = subprocess.run([sys.executable, "run.py", "--help"], check=True, cwd=ROOT, capture_output=True, text=True)
    settings = tomllib.loads((ROOT / "conf" / "default.toml").read_text())
    for section, keys in settings.items():
        for key in keys:
            assert f"TASK_QUEUE_{section}_{key}".upper() in done.stdout
            assert f"{section}.{key} = " in done.stdout
    assert "--work-delay-ms" in done.stdout
