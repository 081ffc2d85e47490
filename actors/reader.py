"""TaskReader: the read side of the store, for the API.

Reads never go through an actor: each calling thread gets its own read-only SQLite
connection, so a ``GET`` never waits behind writes. Rows come back as the API shows them,
with ``data`` and ``result`` decoded from JSON.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import orjson

from actors.db import connect_reader

__all__ = ["Cursor", "TaskReader"]

SELECT_TASKS = (
    "SELECT id, action, payload, status, result, error, attempts, created_at, started_at, processed_at, seq FROM tasks"
)

#: Where a page of the list ends: the (created_at, seq) of its last task.
Cursor = tuple[str, int]


class TaskReader:
    """Reads tasks through one read-only connection per thread."""

    def __init__(self, db_path: str) -> None:
        self._db_path = db_path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_reader(self._db_path)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def get(self, task_id: str) -> dict[str, Any] | None:
        row = self._conn().execute(SELECT_TASKS + " WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _as_task(row)[0]

    def list(
        self, status: str | None = None, limit: int = 100, after: Cursor | None = None
    ) -> tuple[list[dict[str, Any]], Cursor | None]:
        """Newest first; returns the page and the cursor of the next page (None on the last)."""
        where: list[str] = []
        params: list[str | int] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if after is not None:
            where.append("(created_at, seq) < (?, ?)")
            params.extend(after)
        sql = SELECT_TASKS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, seq DESC LIMIT ?"
        rows = self._conn().execute(sql, (*params, limit + 1)).fetchall()
        page = [_as_task(row) for row in rows[:limit]]
        next_cursor = page[-1][1] if len(rows) > limit else None
        return [task for task, _ in page], next_cursor


def _as_task(row: sqlite3.Row) -> tuple[dict[str, Any], Cursor]:
    task = {
        "id": row["id"],
        "action": row["action"],
        "data": orjson.loads(row["payload"]),
        "status": row["status"],
        "result": None if row["result"] is None else orjson.loads(row["result"]),
        "error": row["error"],
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "processed_at": row["processed_at"],
    }
    return task, (row["created_at"], row["seq"])
