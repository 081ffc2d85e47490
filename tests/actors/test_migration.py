from __future__ import annotations

import sqlite3

import pytest

from actors.db import MIGRATIONS
from actors.messages import Migrate
from actors.migration import MigrationActor


def migrate(db_path: str, migrations=MIGRATIONS) -> int:
    actor = MigrationActor.start(db_path, migrations)
    try:
        return actor.ask(Migrate(), timeout=10)
    finally:
        assert actor.actor_stopped.wait(10), "the migration actor must stop after replying"


def tables(db_path: str) -> set[str]:
    conn = sqlite3.connect(db_path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def versions(db_path: str) -> list[int]:
    conn = sqlite3.connect(db_path)
    try:
        return [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        conn.close()


def test_migration_creates_the_tasks_table_and_records_the_version(tmp_path):
    db_path = str(tmp_path / "new" / "folder" / "tasks.db")

    version = migrate(db_path)

    assert version == MIGRATIONS[-1][0]
    assert {"tasks", "schema_migrations"} <= tables(db_path)
    assert versions(db_path) == [v for v, _ in MIGRATIONS]


def test_migrating_twice_is_a_no_op(db_path):
    migrate(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO tasks (id, action, payload, status, created_at, available_at)"
        " VALUES ('a', 'x', '{}', 'queued', 't', 0)"
    )
    conn.commit()
    conn.close()

    assert migrate(db_path) == MIGRATIONS[-1][0]

    assert versions(db_path) == [v for v, _ in MIGRATIONS]
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT id FROM tasks").fetchall() == [("a",)]
    conn.close()


def test_a_failing_migration_is_rolled_back_and_reported(db_path):
    broken = (
        *MIGRATIONS,
        (99, ("CREATE TABLE half_done (a INTEGER)", "THIS IS NOT SQL")),
    )

    with pytest.raises(sqlite3.OperationalError):
        migrate(db_path, broken)

    assert "half_done" not in tables(db_path)
    assert versions(db_path) == [v for v, _ in MIGRATIONS]


def test_version_2_keeps_the_tasks_of_version_1_allows_cancelled_and_keeps_their_last_errors(db_path):
    migrate(db_path, MIGRATIONS[:1])
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO tasks (id, action, payload, status, error, attempts, created_at, processed_at, available_at)"
        " VALUES ('done', 'x', '{}', 'completed', NULL, 1, 't1', 't2', 0),"
        " ('dead', 'x', '{}', 'failed', 'boom', 3, 't1', 't3', 0)"
    )
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):  # version 1 has no cancelled status
        conn.execute("UPDATE tasks SET status = 'cancelled' WHERE id = 'done'")
    conn.close()

    assert migrate(db_path, MIGRATIONS[:2]) == 2

    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT id, status FROM tasks ORDER BY seq").fetchall() == [
        ("done", "completed"),
        ("dead", "failed"),
    ]
    assert conn.execute("SELECT * FROM task_errors").fetchall() == [("dead", 3, "boom", "t3")]
    conn.execute("UPDATE tasks SET status = 'cancelled' WHERE id = 'done'")
    conn.close()


def test_version_3_counts_the_tasks_it_finds_and_its_triggers_keep_the_counts(db_path):
    migrate(db_path, MIGRATIONS[:2])
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(
        "INSERT INTO tasks (id, action, payload, status, attempts, created_at, available_at)"
        " VALUES ('a', 'x', '{}', 'completed', 1, 't1', 0), ('b', 'x', '{}', 'queued', 0, 't1', 0),"
        " ('c', 'y', '{}', 'queued', 0, 't1', 0)"
    )

    assert migrate(db_path) == 3

    def counts() -> list[tuple[str, str, int]]:
        return conn.execute("SELECT action, status, n FROM task_counts ORDER BY 1, 2").fetchall()

    assert counts() == [("x", "completed", 1), ("x", "queued", 1), ("y", "queued", 1)]
    assert conn.execute("SELECT priority FROM tasks WHERE id = 'a'").fetchone() == (0,)
    conn.execute("UPDATE tasks SET status = 'running' WHERE id = 'b'")
    conn.execute("UPDATE tasks SET attempts = 2 WHERE id = 'b'")  # not a change of status
    conn.execute("DELETE FROM tasks WHERE id = 'a'")
    conn.execute(
        "INSERT INTO tasks (id, action, payload, status, attempts, created_at, available_at)"
        " VALUES ('d', 'y', '{}', 'queued', 0, 't2', 0)"
    )
    assert counts() == [("x", "running", 1), ("y", "queued", 2)]
    conn.close()
