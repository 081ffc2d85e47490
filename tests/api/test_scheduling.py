"""Delays (``delay_ms``, ``run_at``) and priorities, over the API with the real actors, through the
queue's in-memory window and through restarts."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from falcon import testing

from actors import start_system
from api import create_app
from tests.helpers import wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    # One task at a time, so the order they start in is the order they were dispatched in.
    return {"workers": {"count": 1}, "queue": {"prefetch": 1}}


def submit(client: testing.TestClient, **body: Any) -> str:
    result = client.simulate_post("/tasks", json={"action": "uppercase", **body})
    assert result.status_code == 202, result.text
    return result.json["id"]


def started_in_order(client: testing.TestClient, ids: list[str]) -> list[str]:
    """The ids, in the order their tasks started, once all have completed."""

    def all_done() -> list[dict[str, Any]] | None:
        tasks = [client.simulate_get(f"/tasks/{task_id}").json for task_id in ids]
        return tasks if all(task["status"] == "completed" for task in tasks) else None

    tasks = wait_until(all_done, what="every task to complete")
    return [task["id"] for task in sorted(tasks, key=lambda task: task["started_at"])]


def test_higher_priority_runs_first_and_equal_priorities_keep_their_order(client):
    client.simulate_post("/queue/pause")
    low = [submit(client, data={"text": f"low {n}"}) for n in range(3)]
    high = submit(client, priority=10)
    middle = [submit(client, priority=1) for _ in range(2)]
    negative = submit(client, priority=-5)
    client.simulate_post("/queue/resume")

    assert started_in_order(client, [*low, high, *middle, negative]) == [high, *middle, *low, negative]
    assert client.simulate_get(f"/tasks/{high}").json["priority"] == 10


@pytest.mark.parametrize("window", [1, 3])
def test_a_task_that_outranks_the_window_runs_before_it_even_with_a_backlog(config, window):
    system = start_system(config.replace(workers={"count": 1}, queue={"prefetch": 1, "window": window}))
    try:
        client = testing.TestClient(create_app(system))
        client.simulate_post("/queue/pause")
        low = [submit(client) for _ in range(6)]  # more than the window holds: the rest waits in the store
        high = submit(client, priority=1)
        client.simulate_post("/queue/resume")

        assert started_in_order(client, [*low, high]) == [high, *low]
    finally:
        system.stop()


def test_priorities_and_delays_hold_through_a_restart(config):
    config = config.replace(workers={"count": 1}, queue={"prefetch": 1})
    system = start_system(config)
    client = testing.TestClient(create_app(system))
    client.simulate_post("/queue/pause")  # nothing runs before the restart, nor after it until resumed
    low = submit(client)
    high = submit(client, priority=3)
    delayed = submit(client, priority=9, delay_ms=3000)  # (due after the restart and the resume)
    system.stop()

    system = start_system(config)
    try:
        client = testing.TestClient(create_app(system))
        assert client.simulate_get("/health").json["paused"] is True
        assert client.simulate_get(f"/tasks/{low}").json["status"] == "queued"
        client.simulate_post("/queue/resume")
        assert started_in_order(client, [low, high, delayed]) == [high, low, delayed]
        task = client.simulate_get(f"/tasks/{delayed}").json
        assert task["started_at"] >= task["run_at"]
    finally:
        system.stop()


def test_a_delayed_task_waits_until_it_is_due_and_shows_when(client):
    delayed = submit(client, delay_ms=800)
    task = client.simulate_get(f"/tasks/{delayed}").json
    assert task["status"] == "queued"
    created = datetime.datetime.fromisoformat(task["created_at"])
    due = datetime.datetime.fromisoformat(task["run_at"])
    assert datetime.timedelta(milliseconds=790) <= due - created <= datetime.timedelta(seconds=2)

    now = submit(client)  # not held up by the delayed one
    wait_until(lambda: client.simulate_get(f"/tasks/{now}").json["status"] == "completed", what="the task")
    assert client.simulate_get(f"/tasks/{delayed}").json["status"] == "queued"

    done = wait_until(
        lambda: (t := client.simulate_get(f"/tasks/{delayed}").json)["status"] == "completed" and t,
        what="the delayed task",
    )
    assert done["started_at"] >= done["run_at"]


def test_run_at_in_the_past_runs_now_and_a_delayed_task_can_be_cancelled(client):
    past = submit(client, run_at="2020-01-01T00:00:00Z")
    later = submit(client, run_at=(datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat())
    wait_until(lambda: client.simulate_get(f"/tasks/{past}").json["status"] == "completed", what="the task")

    cancelled = client.simulate_post(f"/tasks/{later}/cancel")
    assert (cancelled.status_code, cancelled.json["status"]) == (200, "cancelled")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"priority": "high"}, "priority must be a whole number"),
        ({"priority": 2**31}, "priority must be a whole number"),
        ({"priority": True}, "priority must be a whole number"),
        ({"delay_ms": -1}, "delay_ms must be a whole number"),
        ({"delay_ms": 1.5}, "delay_ms must be a whole number"),
        ({"delay_ms": 10, "run_at": "2030-01-01T00:00:00Z"}, "not both"),
        ({"run_at": "tomorrow"}, "run_at must be an ISO 8601 time"),
        ({"run_at": 1767225600}, "run_at must be an ISO 8601 time"),
        ({"run_at": "9999-01-01T00:00:00Z"}, "within a year"),
    ],
)
def test_a_bad_priority_or_delay_is_a_400_and_stores_nothing(client, body, error):
    result = client.simulate_post("/tasks", json={"action": "uppercase", **body})
    assert result.status_code == 400
    assert error in result.json["error"]
    assert client.simulate_get("/tasks").json["count"] == 0
