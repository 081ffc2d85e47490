"""Bulk retry and cancel by filter, with ``dry_run``, and ``GET /stats``, over the API with the real actors."""

from __future__ import annotations

from typing import Any

import pytest
from falcon import testing

import actors.store
from tests.api.test_task_control import status_is, submit, task
from tests.helpers import WriteLockHolder, wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")

FAILS = {"action": "uppercase", "data": {"text": 5}}  # fails at once: not retried


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"workers": {"count": 1}, "store": {"busy_timeout_ms": 200}}


@pytest.fixture(autouse=True, params=[1000, 2], ids=["one batch", "batches of 2"])
def batch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bulk requests work through their tasks a batch at a time: the tests run with batches of 2 too."""
    monkeypatch.setattr(actors.store, "BULK_BATCH", request.param)


def submit_body(client: testing.TestClient, body: dict[str, Any]) -> str:
    result = client.simulate_post("/tasks", json=body)
    assert result.status_code == 202, result.text
    return result.json["id"]


def finished(client: testing.TestClient, ids: list[str], *statuses: str) -> None:
    wait_until(lambda: all(status_is(client, task_id, *statuses) for task_id in ids), what=f"tasks {statuses}")


def test_bulk_retry_counts_with_dry_run_then_queues_the_matching_failed_tasks_again(client):
    failed = [submit_body(client, FAILS) for _ in range(3)]
    other_action = submit_body(client, {"action": "sum", "data": {"numbers": "x"}})
    completed = submit(client, "uppercase")
    finished(client, [*failed, other_action], "failed")
    finished(client, [completed], "completed")

    dry = client.simulate_post("/tasks/bulk/retry", params={"action": "uppercase", "dry_run": "true"})
    assert dry.json == {"count": 3, "dry_run": True}
    assert all(task(client, task_id)["errors"][-1]["attempt"] == 1 for task_id in failed), "a dry run changes nothing"

    done = client.simulate_post("/tasks/bulk/retry", params={"action": "uppercase"})
    assert (done.status_code, done.json) == (200, {"count": 3, "dry_run": False})
    wait_until(lambda: all(len(task(client, task_id)["errors"]) == 2 for task_id in failed), what="second runs")
    assert all(task(client, task_id)["status"] == "failed" for task_id in failed)  # the same data fails again
    assert len(task(client, other_action)["errors"]) == 1, "another action is not matched"
    assert task(client, completed)["attempts"] == 1, "a completed task is not retried"

    again = client.simulate_post("/tasks/bulk/retry", params={"status": "failed", "created_after": "2999-01-01"})
    assert again.json == {"count": 0, "dry_run": False}


def test_bulk_cancel_cancels_queued_and_interrupts_running_tasks_that_match(client):
    running = submit(client, "runs_long")
    wait_until(lambda: status_is(client, running, "running"), what="the long task to run")
    client.simulate_post("/queue/pause")
    queued_a = [submit(client, "a") for _ in range(2)]
    queued_b = [submit(client, "b") for _ in range(3)]
    delayed_b = submit_body(client, {"action": "b", "delay_ms": 60_000})

    assert client.simulate_post("/tasks/bulk/cancel", params={"action": "b", "dry_run": "true"}).json["count"] == 4
    only_b = client.simulate_post("/tasks/bulk/cancel", params={"action": "b", "status": "queued"})
    assert only_b.json == {"count": 4, "dry_run": False}
    assert all(task(client, task_id)["status"] == "cancelled" for task_id in [*queued_b, delayed_b])
    assert all(task(client, task_id)["status"] == "queued" for task_id in queued_a)

    everything = client.simulate_post("/tasks/bulk/cancel")
    assert everything.json == {"count": 3, "dry_run": False}  # two queued, one interrupted
    finished(client, [running, *queued_a], "cancelled")
    assert task(client, running)["error"] == "cancelled while it ran"

    client.simulate_post("/queue/resume")
    after = submit(client, "uppercase")
    finished(client, [after], "completed")
    assert all(task(client, task_id)["attempts"] == 0 for task_id in queued_a), "a cancelled task never runs"


@pytest.mark.parametrize(
    ("path", "params", "error"),
    [
        ("/tasks/bulk/retry", {"status": "completed"}, "only failed or cancelled tasks can be retried"),
        ("/tasks/bulk/cancel", {"status": "failed"}, "only queued or running tasks can be cancelled"),
        ("/tasks/bulk/retry", {"dry_run": "perhaps"}, "dry_run"),
        ("/tasks/bulk/cancel", {"created_after": "yesterday"}, "created_after must be an ISO 8601 time"),
        ("/tasks/bulk/retry", {"limit": "2"}, "limit: a bulk request applies to every task that matches"),
        ("/tasks/bulk/cancel", {"cursor": "abc"}, "cursor: a bulk request applies to every task that matches"),
        ("/tasks/bulk/retry", {"dry_run": ["true", "false"]}, "dry_run must be given once"),
    ],
)
def test_a_bad_bulk_request_is_a_400(client, path, params, error):
    result = client.simulate_post(path, params=params)
    assert result.status_code == 400
    assert error in result.json["error"]


def test_a_bulk_request_with_a_body_is_a_400_and_changes_nothing(client):
    failed = submit_body(client, FAILS)
    finished(client, [failed], "failed")
    result = client.simulate_post("/tasks/bulk/retry", json={"status": "completed"})
    assert result.status_code == 400
    assert "the filter goes in the query string" in result.json["error"]
    assert task(client, failed)["status"] == "failed"


@pytest.mark.backends("embedded")
def test_a_bulk_cancel_the_store_cannot_write_is_a_503_and_dispatching_goes_on(client, db_path):
    lock = WriteLockHolder(db_path)
    try:
        refused = client.simulate_post("/tasks/bulk/cancel")
        assert refused.status_code == 503
        assert "cannot write" in refused.json["error"]
    finally:
        lock.release()
    after = wait_until(lambda: (r := client.simulate_post("/tasks", json={"action": "x"})).status_code == 202 and r)
    finished(client, [after.json["id"]], "completed")


def test_stats_counts_tasks_by_status_and_action_and_what_finished_lately(client):
    done = [submit(client, "uppercase") for _ in range(3)]
    failed = submit_body(client, FAILS)
    finished(client, [*done, failed], "completed", "failed")
    client.simulate_post("/queue/pause")
    submit(client, "sum")
    submit_body(client, {"action": "sum", "delay_ms": 60_000})

    stats = client.simulate_get("/stats").json
    assert stats["counts"] == {"queued": 2, "running": 0, "completed": 3, "failed": 1, "cancelled": 0}
    assert stats["actions"]["uppercase"]["completed"] == 3
    assert stats["actions"]["uppercase"]["failed"] == 1
    assert stats["actions"]["sum"]["queued"] == 2
    assert (stats["ready"], stats["delayed"], stats["in_flight"], stats["paused"]) == (1, 1, 0, True)
    assert stats["oldest_ready_age_s"] >= 0
    throughput = stats["throughput"]
    assert len(throughput["per_minute"]) == 60
    assert throughput["last_minute"] == throughput["last_hour"] == sum(throughput["per_minute"]) == 4
