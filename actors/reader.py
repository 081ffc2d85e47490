"""TaskReader: the read side of the store, for the API.

Reads never go through an actor: each calling thread gets its own read-only SQLite
connection, so a ``GET`` never waits behind writes. Rows come back as the API shows them:
``data`` and ``result`` are the stored JSON text, checked and passed through as an
``orjson.Fragment`` (never decoded and encoded again). A stored value that is not valid
JSON (a damaged row) is shown as ``null``, with the reason in ``unreadable``, so one bad
row cannot take down a page. A database that SQLite cannot read raises :class:`Unreadable`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from actors.db import STATUSES, TaskFilter, is_damage, utc_from_epoch
from actors.engine import Connection, Engine, SqliteEngine

__all__ = ["Cursor", "TaskCounts", "TaskFilter", "TaskReader", "Unreadable"]

SELECT_TASKS = (
    "SELECT id, action, payload, status, result, error, attempts, priority, available_at, created_at, started_at,"
    " processed_at, seq FROM tasks"
)

MAX_ACTIONS = 1000  # the most actions counts() names one by one
COUNT_CAP = 100_000  # counts() counts at most this many delayed (or ready) tasks on an index

#: Where a page of the list ends: the (created_at, seq) of its last task.
Cursor = tuple[str, int]


class Unreadable(Exception):
    """Raised when the database cannot be read; the message says why, without paths or data."""


class TaskReader:
    """Reads tasks through one read-only connection per thread."""

    def __init__(self, database: str | Engine) -> None:
        self._engine: Engine = SqliteEngine(database) if isinstance(database, str) else database
        self._dialect = self._engine.dialect
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self.damage: str | None = None  #: set, for good, once a read finds the file damaged

    def _conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._engine.connect_reader()
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

    def _query(self, sql: str, params: tuple[Any, ...], *, rows: bool = True) -> list[Any]:
        try:
            cursor = self._conn().execute(sql, params)
            return cursor.fetchall() if rows else []
        except self._dialect.errors as e:
            if isinstance(e, sqlite3.Error) and is_damage(e):
                self.damage = f"the database file is damaged ({e})"
                raise Unreadable(self.damage) from e
            raise Unreadable(f"the database cannot be read now ({e})") from e

    def get(self, task_id: str) -> dict[str, Any] | None:
        rows = self._query(SELECT_TASKS + " WHERE id = ?", (task_id,))
        if not rows:
            return None
        task = _as_task(rows[0])[0]
        self._add_errors([task])
        return task

    def _add_errors(self, tasks: list[dict[str, Any]]) -> None:
        """Give each task ``errors``: every failed attempt's error, oldest first (one query for them all)."""
        for task in tasks:
            task["errors"] = []
        if not tasks:
            return
        by_id = {task["id"]: task for task in tasks}
        rows = self._query(
            f"SELECT task_id, attempt, error, failed_at FROM task_errors WHERE {self._dialect.any_of('task_id')}"  # noqa: S608
            f" ORDER BY {self._dialect.error_order}",
            (self._dialect.list_of(list(by_id)),),
        )
        for row in rows:
            by_id[row["task_id"]]["errors"].append(
                {"attempt": row["attempt"], "error": row["error"], "failed_at": row["failed_at"]}
            )

    def list(
        self, filters: TaskFilter | None = None, limit: int = 100, after: Cursor | None = None
    ) -> tuple[list[dict[str, Any]], Cursor | None]:
        """Newest first; returns the page and the cursor of the next page (None on the last)."""
        where, params = (filters or TaskFilter()).where(self._dialect)
        if after is not None:
            where.append("(created_at, seq) < (?, ?)")
            params.extend(after)
        sql = SELECT_TASKS
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, seq DESC LIMIT ?"
        rows = self._query(sql, (*params, limit + 1))
        page = [_as_task(row) for row in rows[:limit]]
        next_cursor = page[-1][1] if len(rows) > limit else None
        tasks = [task for task, _ in page]
        self._add_errors(tasks)
        return tasks, next_cursor

    def paused(self) -> bool:
        """Whether dispatching was paused (POST /queue/pause), and not resumed since."""
        rows = self._query("SELECT value FROM queue_settings WHERE name = 'paused'", ())
        return bool(rows) and rows[0][0] == "true"

    def count(self, filters: TaskFilter) -> int:
        """How many tasks ``filters`` matches."""
        sql, params = filters.applied_to("SELECT COUNT(*) FROM tasks", dialect=self._dialect)
        count: int = self._query(sql, tuple(params))[0][0]
        return count

    def counts(self) -> TaskCounts:
        """Tasks per status and per action, and the queued ones that are delayed, all as of one moment.

        None of it counts the tasks table: ``task_counts`` is kept by triggers, and the delayed are
        counted on the index of queued tasks by due time, up to ``COUNT_CAP``; past it, the ready
        ones are counted instead (the rest of the queued are delayed), and only when both are past
        it are all of them counted."""
        with self._snapshot():
            return self._counts()

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Read in one transaction: every query sees the database as of the first."""
        self._query(self._dialect.snapshot, (), rows=False)
        try:
            yield
        finally:
            with contextlib.suppress(*self._dialect.errors):  # a read-only transaction: ending it cannot lose anything
                self._conn().execute("ROLLBACK")

    def _counts(self) -> TaskCounts:
        by_status = dict.fromkeys(STATUSES, 0)
        for status, n in self._query("SELECT status, SUM(n) FROM task_counts GROUP BY status", ()):
            by_status[status] = int(n)  # (PostgreSQL sums to a decimal)
        by_action: dict[str, dict[str, int]] = {}
        rows = self._query(
            "SELECT action, status, n FROM task_counts WHERE action IN"
            " (SELECT DISTINCT action FROM task_counts WHERE n > 0 ORDER BY action LIMIT ?)",
            (MAX_ACTIONS,),
        )
        for action, status, n in rows:
            by_action.setdefault(action, dict.fromkeys(STATUSES, 0))[status] = n
        now = time.time()
        delayed = self._count_queued("available_at > ?", now, COUNT_CAP)
        if delayed == COUNT_CAP:
            ready = self._count_queued("available_at <= ?", now, COUNT_CAP)
            delayed = by_status["queued"] - ready if ready < COUNT_CAP else self._count_queued("available_at > ?", now)
        (first_due,) = self._query(
            "SELECT MIN(available_at) FROM tasks INDEXED BY tasks_ready WHERE status = 'queued'", ()
        )[0]
        oldest_ready_age_s = None if first_due is None or first_due > now else now - first_due
        return TaskCounts(by_status, by_action, delayed, oldest_ready_age_s)

    def _count_queued(self, condition: str, now: float, cap: int | None = None) -> int:
        """Queued tasks whose due time meets ``condition``, counted on their index, up to ``cap`` (None: all)."""
        sql = "SELECT COUNT(*) FROM (SELECT 1 FROM tasks INDEXED BY tasks_ready WHERE status = 'queued' AND "
        if cap is None:
            return int(self._query(sql + condition + ") AS queued", (now,))[0][0])
        return int(self._query(sql + condition + " LIMIT ?) AS queued", (now, cap))[0][0])


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """What :meth:`TaskReader.counts` finds."""

    by_status: dict[str, int]
    by_action: dict[str, dict[str, int]]  #: at most MAX_ACTIONS actions, by name
    delayed: int  #: queued and not due yet
    oldest_ready_age_s: float | None  #: how long the task due first has been due (None: no task is due)

    @property
    def ready(self) -> int:
        """Queued and due: waiting for a worker."""
        return max(0, self.by_status["queued"] - self.delayed)


def _as_task(row: Any) -> tuple[dict[str, Any], Cursor]:
    unreadable: list[str] = []

    def text(column: str) -> str | None:
        """A text column as stored; anything else (a damaged row, a hand edit) as text, and said so."""
        value = row[column]
        if value is None or isinstance(value, str):
            return value
        unreadable.append(f"{column} is not text in the database")
        return str(value)

    created_at = text("created_at") or ""
    task: dict[str, Any] = {
        "id": text("id"),
        "action": text("action"),
        "data": _stored_json(row["payload"], "data", unreadable),
        "status": text("status"),
        "result": None if row["result"] is None else _stored_json(row["result"], "result", unreadable),
        "error": text("error"),
        "attempts": row["attempts"] if isinstance(row["attempts"], int) else 0,
        "priority": row["priority"] if isinstance(row["priority"], int) else 0,
        "run_at": _run_at(row["available_at"]),
        "created_at": created_at,
        "started_at": text("started_at"),
        "processed_at": text("processed_at"),
    }
    if unreadable:
        task["unreadable"] = "; ".join(unreadable)
    return task, (created_at, row["seq"])


def _run_at(available_at: Any) -> str | None:
    """When the task is (or was last) due to run."""
    try:
        return utc_from_epoch(available_at)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _stored_json(text: Any, name: str, unreadable: list[str]) -> orjson.Fragment | None:
    """The stored JSON text, checked, to be written into the response as it is."""
    try:
        orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError) as e:
        unreadable.append(f"{name} is not valid JSON in the database ({e})")
        return None
    return orjson.Fragment(text)
