"""Task control over the API with the real actors: cancel, retry, delete, pause and resume."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from falcon import testing

from actors import start_system
from actors.actions import registry
from api import create_app
from tests.helpers import WriteLockHolder, busy_for, wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")


@registry.action("runs_long")
def runs_long(data: dict[str, Any]) -> dict[str, Any]:
    busy_for(30)  # Python code: the interrupt reaches it between bytecodes
    return {"output": "ran to the end"}


@registry.action("always_fails")
def always_fails(data: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("it always fails")


@registry.action("short")
def short(data: dict[str, Any]) -> dict[str, Any]:
    busy_for(0.3)
    return {"output": "short"}


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"workers": {"count": 1}, "queue": {"max_attempts": 2}}


def submit(client: testing.TestClient, action: str) -> str:
    result = client.simulate_post("/tasks", json={"action": action})
    assert result.status_code == 202, result.text
    return result.json["id"]


def task(client: testing.TestClient, task_id: str) -> dict[str, Any]:
    return client.simulate_get(f"/tasks/{task_id}").json


def status_is(client: testing.TestClient, task_id: str, *statuses: str) -> dict[str, Any] | None:
    found = task(client, task_id)
    return found if found["status"] in statuses else None


@pytest.mark.backends("distributed")
@pytest.mark.parametrize("how", ["one", "bulk"])
def test_a_task_running_on_another_instance_is_cancelled_through_this_one(client, system, how):
    task_id = submit(client, "runs_long")
    wait_until(lambda: status_is(client, task_id, "running"), what="the task to run")
    other = start_system(system.config)  # a second instance, on the same PostgreSQL schema and RabbitMQ queue
    try:
        other_client = testing.TestClient(create_app(other))
        if how == "one":
            cancelled = other_client.simulate_post(f"/tasks/{task_id}/cancel")
            assert (cancelled.status_code, cancelled.json) == (200, {"id": task_id, "status": "cancelled"})
        else:
            cancelled = other_client.simulate_post("/tasks/bulk/cancel", params={"status": "running"})
            assert (cancelled.status_code, cancelled.json["count"]) == (200, 1)
            wait_until(lambda: status_is(client, task_id, "cancelled"), what="the instance running it to cancel it")
    finally:
        other.stop()

    found = task(client, task_id)
    assert (found["status"], found["error"], found["attempts"]) == ("cancelled", "cancelled while it ran", 1)
    assert system.inspect().in_flight == 0, "its worker was interrupted"


def test_a_queued_task_cancelled_never_runs(client):
    assert client.simulate_post("/queue/pause").json == {"paused": True}
    task_id = submit(client, "uppercase")

    cancelled = client.simulate_post(f"/tasks/{task_id}/cancel")
    client.simulate_post("/queue/resume")
    after = submit(client, "uppercase")  # runs: the queue has moved past the cancelled one
    wait_until(lambda: status_is(client, after, "completed"), what="the next task")

    assert (cancelled.status_code, cancelled.json) == (200, {"id": task_id, "status": "cancelled"})
    found = task(client, task_id)
    assert (found["status"], found["attempts"], found["started_at"], found["result"]) == ("cancelled", 0, None, None)


def test_a_running_task_is_interrupted_ends_cancelled_and_the_worker_goes_on(client):
    task_id = submit(client, "runs_long")
    wait_until(lambda: status_is(client, task_id, "running"), what="the task to run")

    cancelled = client.simulate_post(f"/tasks/{task_id}/cancel")

    assert (cancelled.status_code, cancelled.json["status"]) == (200, "cancelled")
    found = task(client, task_id)
    assert (found["status"], found["error"], found["attempts"]) == ("cancelled", "cancelled while it ran", 1)
    next_one = submit(client, "uppercase")
    wait_until(lambda: status_is(client, next_one, "completed"), what="the same worker to run the next task")
    health = client.simulate_get("/health").json
    assert (health["workers"], health["worker_restarts"]) == (1, 0)


HOLD = threading.Event()


@registry.action("holds_the_worker")
def holds_the_worker(data: dict[str, Any]) -> dict[str, Any]:
    HOLD.wait(30)  # holds the only worker, so the next task waits in its inbox
    return {"output": "released"}


def test_a_task_waiting_in_its_workers_inbox_is_cancelled_before_it_runs(client, system):
    HOLD.clear()
    first = submit(client, "holds_the_worker")
    waiting = submit(client, "uppercase")  # handed to the only worker, behind the first
    wait_until(lambda: status_is(client, waiting, "running"), what="the second task to be handed over")
    answers: list[testing.Result] = []
    cancel = threading.Thread(target=lambda: answers.append(client.simulate_post(f"/tasks/{waiting}/cancel")))
    cancel.start()
    try:
        wait_until(lambda: system.inspect().cancelling == 1, what="the queue to send the cancel to the worker")
    finally:
        HOLD.set()  # the first task ends; the worker meets the second, cancelled, and skips it
    cancel.join(30)

    assert answers[0].json == {"id": waiting, "status": "cancelled"}
    assert task(client, waiting)["error"] == "cancelled before it ran"
    assert wait_until(lambda: status_is(client, first, "completed"), what="the first task")


@pytest.mark.parametrize("settings", [{"workers": {"count": 1}, "queue": {"retry_backoff_ms": 60_000}}])
def test_a_task_waiting_for_its_retry_is_cancelled_and_not_retried(client, system):
    task_id = submit(client, "always_fails")
    wait_until(lambda: task(client, task_id)["errors"], what="the first attempt to fail")

    cancelled = client.simulate_post(f"/tasks/{task_id}/cancel")

    assert cancelled.json == {"id": task_id, "status": "cancelled"}
    wait_until(lambda: system.inspect().unfinished == 0, what="the backlog to forget it")
    found = task(client, task_id)
    assert (found["status"], found["attempts"]) == ("cancelled", 1)


@pytest.mark.parametrize("path", ["cancel", "retry"])
def test_control_of_an_unknown_task_is_a_404(client, path):
    result = client.simulate_post(f"/tasks/nope/{path}")

    assert (result.status_code, result.json) == (404, {"error": "task not found"})


def test_a_finished_task_cannot_be_cancelled_and_a_waiting_one_cannot_be_retried(client):
    done = submit(client, "uppercase")
    wait_until(lambda: status_is(client, done, "completed"), what="the task to complete")
    client.simulate_post("/queue/pause")
    waiting = submit(client, "uppercase")

    cancel = client.simulate_post(f"/tasks/{done}/cancel")
    retry = client.simulate_post(f"/tasks/{waiting}/retry")
    retry_done = client.simulate_post(f"/tasks/{done}/retry")

    assert (cancel.status_code, cancel.json["error"]) == (
        409,
        "the task is completed: only a queued or running task can be cancelled",
    )
    assert (retry.status_code, retry.json["error"]) == (
        409,
        "the task is queued: only a failed or cancelled task can be retried",
    )
    assert retry_done.status_code == 409


def test_a_failed_task_retried_runs_again_as_a_new_series_and_keeps_its_old_errors(client):
    task_id = submit(client, "always_fails")
    failed = wait_until(lambda: status_is(client, task_id, "failed"), what="the task to fail twice")
    assert [e["attempt"] for e in failed["errors"]] == [1, 2]

    retried = client.simulate_post(f"/tasks/{task_id}/retry")

    assert (retried.status_code, retried.json) == (200, {"id": task_id, "status": "queued"})
    again = wait_until(
        lambda: (t := task(client, task_id))["status"] == "failed" and len(t["errors"]) == 4 and t,
        what="the new series to fail too",
    )
    assert [e["attempt"] for e in again["errors"]] == [1, 2, 1, 2]
    assert again["attempts"] == 2


def test_a_cancelled_task_retried_runs(client):
    client.simulate_post("/queue/pause")
    task_id = submit(client, "uppercase")
    client.simulate_post(f"/tasks/{task_id}/cancel")
    client.simulate_post("/queue/resume")

    assert client.simulate_post(f"/tasks/{task_id}/retry").json["status"] == "queued"

    done = wait_until(lambda: status_is(client, task_id, "completed"), what="the retried task")
    assert done["result"] == {"output": ""}


def test_a_finished_task_is_deleted_with_its_errors_and_an_unfinished_one_is_not(client, db_query):
    task_id = submit(client, "always_fails")
    wait_until(lambda: status_is(client, task_id, "failed"), what="the task to fail")
    client.simulate_post("/queue/pause")
    waiting = submit(client, "uppercase")

    deleted = client.simulate_delete(f"/tasks/{task_id}")
    refused = client.simulate_delete(f"/tasks/{waiting}")

    assert (deleted.status_code, deleted.text) == (204, "")
    assert client.simulate_get(f"/tasks/{task_id}").status_code == 404
    assert client.simulate_delete(f"/tasks/{task_id}").status_code == 404
    assert (refused.status_code, refused.json["error"]) == (
        409,
        "the task is queued: only a completed, failed or cancelled task can be deleted; cancel it first",
    )
    assert db_query("SELECT task_id FROM task_errors WHERE task_id = ?", task_id) == []


def test_while_paused_submits_are_committed_and_nothing_starts_until_resumed(client, backend):
    client.simulate_post("/queue/pause")
    ids = [submit(client, "uppercase") for _ in range(3)]

    health = client.simulate_get("/health").json
    held = 3 if backend == "embedded" else 0  # (distributed: nothing is published to RabbitMQ while paused)
    assert (health["paused"], health["backlog"], health["ready"], health["in_flight"]) == (True, 3, held, 0)
    assert [task(client, i)["status"] for i in ids] == ["queued"] * 3
    assert client.simulate_post("/queue/resume").json == {"paused": False}
    assert client.simulate_get("/health").json["paused"] is False
    for task_id in ids:
        wait_until(lambda task_id=task_id: status_is(client, task_id, "completed"), what="the tasks after resume")


BLOCKED = threading.Event()


@registry.action("blocks_in_c")
def blocks_in_c(data: dict[str, Any]) -> dict[str, Any]:
    BLOCKED.wait(30)  # a wait in C: the interrupt cannot reach it until it returns
    return {"output": "too late"}


def test_a_task_blocked_where_the_interrupt_cannot_reach_ends_cancelled_and_its_worker_is_replaced(client):
    BLOCKED.clear()
    task_id = submit(client, "blocks_in_c")
    wait_until(lambda: status_is(client, task_id, "running"), what="the task to run")
    try:
        cancelled = client.simulate_post(f"/tasks/{task_id}/cancel")

        assert (cancelled.status_code, cancelled.json["status"]) == (200, "cancelled")
        assert task(client, task_id)["error"].startswith("the worker running it failed: stuck in task")
        health = client.simulate_get("/health").json
        assert (health["workers"], health["worker_restarts"]) == (1, 1)
        next_one = submit(client, "uppercase")
        wait_until(lambda: status_is(client, next_one, "completed"), what="the new worker to run the next task")
    finally:
        BLOCKED.set()  # the stuck worker's thread returns, runs nothing more, and ends


def test_two_cancels_of_one_running_task_both_get_their_answer(client):
    task_id = submit(client, "runs_long")
    wait_until(lambda: status_is(client, task_id, "running"), what="the task to run")
    answers: list[int] = []
    cancels = [
        threading.Thread(target=lambda: answers.append(client.simulate_post(f"/tasks/{task_id}/cancel").status_code))
        for _ in range(2)
    ]
    for cancel in cancels:
        cancel.start()
    for cancel in cancels:
        cancel.join(30)

    assert sorted(answers) in ([200, 200], [200, 409]), "the second may come after the first has ended it"
    assert task(client, task_id)["status"] == "cancelled"


def test_a_pause_holds_across_a_restart_and_so_does_a_resume(config, caplog):
    system = start_system(config)
    try:
        assert testing.TestClient(create_app(system)).simulate_post("/queue/pause").json == {"paused": True}
    finally:
        system.stop()

    system = start_system(config)
    try:
        client = testing.TestClient(create_app(system))
        assert client.simulate_get("/health").json["paused"] is True
        task_id = submit(client, "uppercase")
        assert client.simulate_get("/stats").json["paused"] is True
        assert task(client, task_id)["status"] == "queued"
        assert "dispatching is paused, as it was before the restart" in caplog.text
        client.simulate_post("/queue/resume")
        wait_until(lambda: status_is(client, task_id, "completed"), what="the task, once resumed")
    finally:
        system.stop()

    system = start_system(config)
    try:
        assert testing.TestClient(create_app(system)).simulate_get("/health").json["paused"] is False
    finally:
        system.stop()


@pytest.mark.backends("embedded")
def test_a_pause_the_store_cannot_save_is_a_503(client, db_path):
    lock = WriteLockHolder(db_path)
    try:
        refused = client.simulate_post("/queue/pause")
        assert refused.status_code == 503
        assert "dispatching is paused now, but it could not be kept for a restart" in refused.json["error"]
    finally:
        lock.release()
    assert client.simulate_post("/queue/resume").json == {"paused": False}
