"""The database file deleted, replaced or damaged under a running service: no 202 for a task that
would be lost, no 500, and /health says what is wrong."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest
from falcon import testing

from actors import TaskSystem
from tests.helpers import damage, wait_until


def submit(client: testing.TestClient) -> testing.Result:
    return client.simulate_post("/tasks", json={"action": "uppercase", "data": {"text": "x" * 300}})


def completed(client: testing.TestClient, task_id: str) -> bool:
    return client.simulate_get(f"/tasks/{task_id}").json["status"] == "completed"


def delete(db_path: str) -> None:
    for path in (db_path, db_path + "-wal", db_path + "-shm"):
        os.remove(path)


def replace(db_path: str) -> None:
    shutil.copy(db_path, db_path + ".copy")  # a restored backup, say: the same content in a new file
    os.replace(db_path + ".copy", db_path)


@pytest.mark.parametrize("change", [delete, replace])
def test_a_database_file_deleted_or_replaced_under_the_service_refuses_submits_and_stops_the_store(
    client, system: TaskSystem, db_path, change
):
    before = submit(client).json["id"]
    wait_until(lambda: completed(client, before), what="a task before the change")

    change(db_path)
    refused = submit(client)

    assert refused.status_code == 503
    assert refused.json == {"error": "the database file was deleted or replaced; the task was not stored"}
    wait_until(lambda: not system.store.is_alive(), what="the store to stop")
    health = client.simulate_get("/health")
    assert (health.status_code, health.json["error"]) == (503, "the store actor is not running")
    assert system.problem() is not None, "run.py's watchdog stops the process (exit 1) on this"


def test_a_damaged_database_file_answers_reads_with_a_json_503_and_health_says_so(client, db_path):
    ids = [submit(client).json["id"] for _ in range(300)]
    wait_until(lambda: completed(client, ids[-1]), what="the tasks to complete")
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page into the database file itself
    conn.close()

    damage(db_path)
    listing = client.simulate_get("/tasks", params={"limit": 1000})
    health = client.simulate_get("/health")

    assert listing.status_code == 503, listing.text
    assert listing.json == {"error": "the database file is damaged (database disk image is malformed)"}
    assert health.status_code == 503
    assert health.json["error"] == "the database file is damaged (database disk image is malformed)"


def test_a_database_file_deleted_under_an_idle_service_is_found_by_health(client, system: TaskSystem, db_path):
    system.inspect()  # the queue has started, and told the store what it writes at start-up
    assert system.inspect_store().fault is None  # which the store has written
    delete(db_path)

    health = client.simulate_get("/health")

    assert (health.status_code, health.json["error"]) == (503, "the database file was deleted or replaced")
    wait_until(lambda: not system.store.is_alive(), what="the store to stop, for the process to exit 1")
