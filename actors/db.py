"""SQLite connections and the schema's migrations: the database details the actors share.

One writer connection belongs to the StoreActor (and, before it, to the MigrationActor);
readers open their own read-only connections. Times are stored as ISO 8601 UTC text with
microseconds (``2026-11-23T06:19:00.123456Z``), which sorts in time order; the internal
``available_at`` column holds epoch seconds: when a queued task is due to run.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "FINISHED",
    "MIGRATIONS",
    "SQLITE",
    "STATUSES",
    "Dialect",
    "TaskFilter",
    "connect_reader",
    "connect_writer",
    "epoch_now",
    "is_damage",
    "utc_from_epoch",
    "utc_now",
]

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
BUSY_TIMEOUT_MS = 5000

#: Versioned migrations, applied in order, each in one transaction. Never edit one that
#: has been released: add the next version instead.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """
            CREATE TABLE tasks (
                seq          INTEGER PRIMARY KEY,
                id           TEXT    NOT NULL UNIQUE,
                action       TEXT    NOT NULL,
                payload      TEXT    NOT NULL,
                status       TEXT    NOT NULL
                             CHECK (status IN ('queued', 'running', 'completed', 'failed')),
                result       TEXT,
                error        TEXT,
                attempts     INTEGER NOT NULL DEFAULT 0,
                created_at   TEXT    NOT NULL,
                started_at   TEXT,
                processed_at TEXT,
                available_at REAL    NOT NULL
            )
            """,
            "CREATE INDEX tasks_by_created ON tasks (created_at, seq)",
            "CREATE INDEX tasks_by_status_created ON tasks (status, created_at, seq)",
            "CREATE INDEX tasks_ready ON tasks (available_at, seq) WHERE status = 'queued'",
        ),
    ),
    (
        2,
        (
            # A task can be cancelled. SQLite cannot change a CHECK constraint, so the table is
            # built again (about 2 s per million tasks, once).
            """
            CREATE TABLE tasks_v2 (
                seq          INTEGER PRIMARY KEY,
                id           TEXT    NOT NULL UNIQUE,
                action       TEXT    NOT NULL,
                payload      TEXT    NOT NULL,
                status       TEXT    NOT NULL
                             CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
                result       TEXT,
                error        TEXT,
                attempts     INTEGER NOT NULL DEFAULT 0,
                created_at   TEXT    NOT NULL,
                started_at   TEXT,
                processed_at TEXT,
                available_at REAL    NOT NULL
            )
            """,
            "INSERT INTO tasks_v2 SELECT * FROM tasks",
            "DROP TABLE tasks",
            "ALTER TABLE tasks_v2 RENAME TO tasks",
            "CREATE INDEX tasks_by_created ON tasks (created_at, seq)",
            "CREATE INDEX tasks_by_status_created ON tasks (status, created_at, seq)",
            "CREATE INDEX tasks_ready ON tasks (available_at, seq) WHERE status = 'queued'",
            # Every failed attempt's error, not only the last one.
            """
            CREATE TABLE task_errors (
                task_id   TEXT    NOT NULL,
                attempt   INTEGER NOT NULL,
                error     TEXT    NOT NULL,
                failed_at TEXT    NOT NULL
            )
            """,
            "CREATE INDEX task_errors_by_task ON task_errors (task_id)",
            # Idempotency-Key of POST /tasks: which task a key gave, for the window it lasts.
            """
            CREATE TABLE idempotency_keys (
                key          TEXT PRIMARY KEY,
                request_hash TEXT NOT NULL,
                task_id      TEXT NOT NULL,
                created_at   REAL NOT NULL
            )
            """,
            "CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at)",
            """
            INSERT INTO task_errors (task_id, attempt, error, failed_at)
            SELECT id, attempts, error, COALESCE(processed_at, created_at) FROM tasks WHERE error IS NOT NULL
            """,
        ),
    ),
    (
        3,
        (
            # Higher priority runs first among ready tasks; equal priorities keep their order.
            "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX tasks_by_priority ON tasks (priority DESC, available_at, seq) WHERE status = 'queued'",
            # Tasks per action and status, kept by triggers in the same transactions as the tasks,
            # so /stats and /metrics never count the table; a row that reaches 0 is deleted, so made-up
            # action names do not pile up. A later migration that rebuilds the tasks table must create
            # these triggers again.
            """
            CREATE TABLE task_counts (
                action TEXT    NOT NULL,
                status TEXT    NOT NULL,
                n      INTEGER NOT NULL,
                PRIMARY KEY (action, status)
            ) WITHOUT ROWID
            """,
            "INSERT INTO task_counts (action, status, n) SELECT action, status, COUNT(*) FROM tasks GROUP BY 1, 2",
            """
            CREATE TRIGGER tasks_counted_on_insert AFTER INSERT ON tasks BEGIN
                INSERT INTO task_counts (action, status, n) VALUES (NEW.action, NEW.status, 1)
                ON CONFLICT (action, status) DO UPDATE SET n = n + 1;
            END
            """,
            """
            CREATE TRIGGER tasks_counted_on_update AFTER UPDATE OF status ON tasks
            WHEN OLD.status IS NOT NEW.status BEGIN
                UPDATE task_counts SET n = n - 1 WHERE action = OLD.action AND status = OLD.status;
                DELETE FROM task_counts WHERE action = OLD.action AND status = OLD.status AND n = 0;
                INSERT INTO task_counts (action, status, n) VALUES (NEW.action, NEW.status, 1)
                ON CONFLICT (action, status) DO UPDATE SET n = n + 1;
            END
            """,
            # The queue's own state that outlives a process: "paused" (POST /queue/pause).
            "CREATE TABLE queue_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """
            CREATE TRIGGER tasks_counted_on_delete AFTER DELETE ON tasks BEGIN
                UPDATE task_counts SET n = n - 1 WHERE action = OLD.action AND status = OLD.status;
                DELETE FROM task_counts WHERE action = OLD.action AND status = OLD.status AND n = 0;
            END
            """,
        ),
    ),
)


_formatted_second: tuple[int, str] = (0, "")  # the last second formatted, reused within that second


def utc_now() -> str:
    """The current time as stored: ISO 8601 UTC with microseconds (``2026-11-23T06:19:00.123456Z``).

    Called several times per task, so it formats each second once rather than every time
    (datetime.strftime was 8% of the actors' CPU).
    """
    global _formatted_second  # noqa: PLW0603 -- a memo of immutable strings; a race only formats twice
    now = time.time()
    second = int(now)
    cached_second, prefix = _formatted_second
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _formatted_second = (second, prefix)
    return f"{prefix}.{int((now - second) * 1_000_000):06d}Z"


def epoch_now() -> float:
    return time.time()


def utc_from_epoch(seconds: float) -> str:
    """Epoch seconds in the form times are stored in."""
    second = int(seconds)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{int((seconds - second) * 1_000_000):06d}Z"


def is_damage(error: sqlite3.Error) -> bool:
    """Whether SQLite's ``error`` says the file is not a sound database (corrupt, or not one at all)."""
    return getattr(error, "sqlite_errorname", None) in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def connect_writer(
    path: str, synchronous: str = "FULL", busy_timeout_ms: int = BUSY_TIMEOUT_MS, max_pages: int = 0
) -> sqlite3.Connection:
    """Open (creating the file and its folder if needed) the one connection that writes.

    ``max_pages`` (0: no limit) caps the file at that many pages, past which writes fail as
    if the disk were full.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    if max_pages:
        conn.execute(f"PRAGMA max_page_count = {int(max_pages)}")
    return conn


def connect_reader(path: str) -> sqlite3.Connection:
    """Open a read-only connection; it never takes the write lock."""
    conn = sqlite3.connect(
        f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.row_factory = sqlite3.Row
    return conn


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs in the SQL of the engines the store runs on (SQLite or PostgreSQL).

    The statements are written for SQLite's driver (``?`` placeholders); PostgreSQL's connection
    translates them (:mod:`actors.postgres`). What it cannot translate is here.
    """

    name: str
    transient_errors: tuple[type[Exception], ...]  #: a write that failed now and may work later
    errors: tuple[type[Exception], ...]  #: any error of the database
    json_lists: bool  #: lists are passed as JSON text and read with json_each (else as arrays)
    error_order: str  #: the column that orders task_errors as they were written
    snapshot: str  #: begins a read-only transaction in which every query sees the database as of the first

    def any_of(self, column: str) -> str:
        """A condition: ``column`` is one of the list passed as the parameter (see :meth:`list_of`)."""
        if self.json_lists:
            return f"{column} IN (SELECT value FROM json_each(?))"  # noqa: S608 -- a column name of the code's
        return f"{column} = ANY(?)"

    def list_of(self, values: list[Any] | tuple[Any, ...]) -> Any:
        """A list as the parameter of :meth:`any_of`."""
        return orjson.dumps(list(values)).decode() if self.json_lists else list(values)


SQLITE = Dialect(
    "sqlite",
    transient_errors=(sqlite3.OperationalError,),  # busy, read-only, disk full, I/O error
    errors=(sqlite3.Error,),
    json_lists=True,
    error_order="rowid",
    snapshot="BEGIN",
)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks a list shows: every condition given must hold."""

    statuses: tuple[str, ...] = ()  #: any of these (none: any status)
    action: str | None = None
    created_after: str | None = None  #: created at or after this time (stored form, UTC)
    created_before: str | None = None  #: created before this time

    def applied_to(self, statement: str, *params: Any, dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
        """``statement`` (with its ``params``) limited to the tasks this filter matches."""
        where, filter_params = self.where(dialect)
        if where:
            statement += " WHERE " + " AND ".join(where)
        return statement, [*params, *filter_params]

    def where(self, dialect: Dialect = SQLITE) -> tuple[list[str], list[Any]]:
        """The conditions as SQL, with their parameters."""
        where: list[str] = []
        params: list[Any] = []
        if len(self.statuses) == 1:
            where.append("status = ?")  # uses the (status, created_at) index
            params.append(self.statuses[0])
        elif self.statuses:
            where.append(dialect.any_of("status"))
            params.append(dialect.list_of(self.statuses))
        for condition, value in (
            ("action = ?", self.action),
            ("created_at >= ?", self.created_after),
            ("created_at < ?", self.created_before),
        ):
            if value is not None:
                where.append(condition)
                params.append(value)
        return where, params
