"""POST /tasks under real SQLite faults: 503 with Retry-After, never a 202 for a task not committed,
and recovery without a restart once the fault clears."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from falcon import testing

from tests.helpers import WriteLockHolder, row, set_immutable, wait_until


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"store": {"busy_timeout_ms": 200, "max_pages": 60}}


def submit(client: testing.TestClient, text: str = "x") -> testing.Result:
    return client.simulate_post("/tasks", json={"action": "uppercase", "data": {"text": text}})


def assert_refused(result: testing.Result) -> None:
    assert result.status_code == 503, result.text
    assert result.headers["retry-after"] == "1"
    assert result.json == {"error": "the store cannot write now; try again"}


def all_completed(client: testing.TestClient, ids: list[str]) -> bool:
    return all(client.simulate_get(f"/tasks/{i}").json["status"] == "completed" for i in ids)


def assert_unhealthy(client: testing.TestClient, reason: str) -> None:
    health = client.simulate_get("/health")
    assert health.status_code == 503, health.text
    assert (health.json["status"], health.json["error"]) == ("unavailable", f"the store cannot write: {reason}")


def healthy_again(client: testing.TestClient) -> None:
    """The store finds out by itself that the fault cleared, with no new writes to tell it."""
    wait_until(lambda: client.simulate_get("/health").status_code == 200, what="/health to answer 200 again")


def test_busy_database_refuses_submits_then_recovers(client, db_path):
    before = submit(client).json["id"]
    lock = WriteLockHolder(db_path)
    try:
        assert_refused(submit(client))
        assert client.simulate_get("/tasks").status_code == 200, "reads go on while the writer is locked out"
        assert_unhealthy(client, "database is locked")
    finally:
        lock.release()

    healthy_again(client)
    after = submit(client)
    assert after.status_code == 202
    wait_until(lambda: all_completed(client, [before, after.json["id"]]), what="both tasks to complete")


def test_read_only_database_file_refuses_submits_then_recovers(client, db_path):
    before = submit(client).json["id"]
    wait_until(lambda: all_completed(client, [before]), what="the first task")
    files = [db_path, db_path + "-wal"]
    set_immutable(files, True)
    try:
        assert_refused(submit(client))
        assert client.simulate_get(f"/tasks/{before}").json["status"] == "completed"
        assert_unhealthy(client, "disk I/O error")  # what SQLite says when the WAL cannot be written
    finally:
        set_immutable(files, False)

    healthy_again(client)
    after = submit(client)
    assert after.status_code == 202
    wait_until(lambda: all_completed(client, [after.json["id"]]), what="the task after the fault")


def test_full_database_refuses_submits_and_recovers_when_space_is_freed(client, db_path):
    accepted: list[str] = []
    for n in range(300):
        result = submit(client, f"{n:04d}" * 500)
        if result.status_code != 202:
            assert_refused(result)
            break
        accepted.append(result.json["id"])
    else:
        pytest.fail("the database never filled up")
    assert all(row(db_path, task_id) is not None for task_id in accepted), "every 202 was committed"

    conn = sqlite3.connect(db_path)  # an operator frees space
    conn.execute("DELETE FROM tasks WHERE id IN (?, ?, ?, ?, ?)", tuple(accepted[:5]))
    conn.commit()
    conn.close()

    wait_until(lambda: all_completed(client, accepted[5:]), what="the accepted tasks to complete")
    assert submit(client).status_code == 202
