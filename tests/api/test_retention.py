"""Retention: with ``store.retention_s`` set, the store deletes finished tasks older than that, with
their errors, and leaves unfinished ones alone."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import pytest

from tests.api.test_bulk import FAILS, finished, submit_body
from tests.helpers import wait_until


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"store": {"retention_s": 1}}


def test_finished_tasks_older_than_the_retention_are_deleted_with_their_errors(client, db_path, caplog):
    caplog.set_level(logging.INFO, "actors.store")
    completed = [submit_body(client, {"action": "uppercase"}) for _ in range(3)]
    failed = submit_body(client, FAILS)
    waiting = submit_body(client, {"action": "uppercase", "delay_ms": 60_000})
    finished(client, [*completed, failed], "completed", "failed")

    wait_until(
        lambda: all(client.simulate_get(f"/tasks/{task_id}").status_code == 404 for task_id in [*completed, failed]),
        what="the finished tasks to be deleted",
    )
    assert client.simulate_get(f"/tasks/{waiting}").json["status"] == "queued"
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM task_errors").fetchone() == (0,)
    conn.close()
    assert client.simulate_get("/stats").json["counts"] == {
        "queued": 1,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert "finished tasks older than 1 s (store.retention_s)" in caplog.text
