"""PostgreSQL: the store of the distributed mode (``store.url = "postgresql://..."``).

Many instances share one database. The store's SQL is written for SQLite's driver; a
:class:`PgConnection` runs it here after a few mechanical changes (``?`` placeholders become
``%s``, SQLite's ``INDEXED BY`` hints go, ``BEGIN IMMEDIATE`` is a plain ``BEGIN``); what
cannot be changed so is in the :data:`POSTGRES` dialect.

The schema and the distributed mode's statements are in :mod:`actors.pg_sql`.
Migrations run under an advisory lock, so instances starting together apply each one once.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.errors import InvalidSchemaName
from psycopg_pool import ConnectionPool

from actors.db import Dialect, utc_now
from actors.engine import safe_url
from actors.pg_sql import MIGRATIONS

__all__ = ["MIGRATIONS", "POSTGRES", "InvalidSchemaName", "PgConnection", "PostgresEngine", "Row", "migrate"]

CONNECT_TIMEOUT_S = 5
APPLICATION_NAME = "task-queue"
READERS = 8  # read connections of an instance, at most: with its writer, 9 of PostgreSQL's (100 by default)
LOCK_TIMEOUT_MS = 5000
#: A server that vanished (a network partition) is noticed within about 20 s, not the system's hours.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 5, "keepalives_count": 3}

POSTGRES = Dialect(
    "postgresql",
    transient_errors=(
        psycopg.OperationalError,  # connection lost or refused, server shutting down, deadlock, disk full
        psycopg.InterfaceError,  # the connection is closed
        psycopg.errors.ReadOnlySqlTransaction,  # a standby
    ),
    errors=(psycopg.Error,),
    json_lists=False,
    error_order="seq",
    snapshot="BEGIN ISOLATION LEVEL REPEATABLE READ",
)


class Row(tuple[Any, ...]):
    """A row that answers both ``row[0]`` and ``row["name"]``, as sqlite3.Row does."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    row_type = type("Row", (Row,), {"_index": index})
    return row_type


_HINT = re.compile(r"\s+INDEXED BY \w+")


@functools.lru_cache(maxsize=512)
def _translated(sql: str, with_parameters: bool) -> str:
    """SQLite's form of a statement as PostgreSQL takes it."""
    if sql == "BEGIN IMMEDIATE":
        return "BEGIN"
    sql = _HINT.sub("", sql)
    return sql.replace("%", "%%").replace("?", "%s") if with_parameters else sql


def _storable(value: Any) -> Any:
    """``value``, with any NUL character in its text (which PostgreSQL cannot store) as U+FFFD: an id or
    an action name that holds one matches nothing, and an error message that holds one is still kept."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


class PgConnection:
    """A psycopg connection used like sqlite3's: ``execute`` with ``?`` placeholders, explicit
    ``BEGIN``/``COMMIT``. A connection that broke (the server restarted, the backend was
    terminated) is opened again at the next ``BEGIN``; until then, statements fail as the
    transaction they were in did."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(_conninfo(self._url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")  # a row another instance holds: 503, not a hang
        return conn

    @property
    def broken(self) -> bool:
        """Whether the connection was lost (a statement that failed then may have been done, or not)."""
        return self._conn.broken

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        broken = self._conn.closed or self._conn.broken
        if broken and sql in ("BEGIN", "BEGIN IMMEDIATE"):
            self._conn.close()
            self._conn = self._connect()
        elif broken and sql == "ROLLBACK":
            return None  # the transaction went with the connection
        if parameters:
            return self._conn.execute(_translated(sql, True), [_storable(value) for value in parameters])
        return self._conn.execute(_translated(sql, False))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Any:
        """One statement for many rows: psycopg sends them in one pipeline, without a round trip each."""
        cursor = self._conn.cursor()
        cursor.executemany(_translated(sql, True), [[_storable(value) for value in row] for row in parameters])
        return cursor

    def close(self) -> None:
        self._conn.close()


class PostgresEngine:
    """A PostgreSQL database at ``url``, shared by every instance."""

    dialect = POSTGRES

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = safe_url(url)
        self._readers: ReadPool | None = None
        self._readers_lock = threading.Lock()

    def connect_writer(self) -> PgConnection:
        return PgConnection(self.url)

    def connect_reader(self) -> ReadPool:
        """The readers' pool, shared by every thread that reads (one connection each would be one per
        request thread of every instance: more than PostgreSQL's 100 connections)."""
        with self._readers_lock:
            if self._readers is None:
                self._readers = ReadPool(self.url)
            return self._readers

    def moved(self) -> bool:
        return False  # a server's database does not move from under its connections


class ReadPool:
    """Read-only connections for the API's threads, used like one connection: a statement borrows one
    for itself, and a read-only transaction (``BEGIN`` ... ``ROLLBACK``) keeps one for its thread until
    it ends. A broken connection is dropped by the pool, and the next read gets a new one."""

    def __init__(self, url: str) -> None:
        self._pool = ConnectionPool(
            _conninfo(url),
            min_size=1,
            max_size=READERS,
            kwargs={"autocommit": True, "row_factory": _row_factory},
            configure=_read_only,
            timeout=CONNECT_TIMEOUT_S,
            name="task-queue-readers",
            open=True,
        )
        self._held = threading.local()  # the thread's connection while it is in a transaction

    @property
    def in_transaction(self) -> bool:
        return getattr(self._held, "conn", None) is not None

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Rows:
        held: psycopg.Connection[Any] | None = getattr(self._held, "conn", None)
        if sql.startswith("BEGIN"):
            held = self._held.conn = self._pool.getconn()
        if held is None:
            with self._pool.connection() as conn:
                return _run(conn, sql, parameters)
        if sql == "ROLLBACK":
            self._held.conn = None
            try:
                return _run(held, sql, parameters)
            finally:
                self._pool.putconn(held)
        return _run(held, sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Any:
        raise TypeError("readers do not write")

    def close(self) -> None:
        self._pool.close()


class _Rows:
    """A statement's rows, fetched before its connection went back to the pool."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchall(self) -> list[Any]:
        return self._rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None


def _run(conn: psycopg.Connection[Any], sql: str, parameters: Sequence[Any]) -> _Rows:
    if parameters:
        cursor = conn.execute(_translated(sql, True), [_storable(value) for value in parameters])
    else:
        cursor = conn.execute(_translated(sql, False))
    return _Rows(cursor.fetchall() if cursor.description else [])


def _read_only(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET default_transaction_read_only = on")


def _conninfo(url: str) -> str:
    """``url`` with the connection settings every connection of an instance has."""
    conninfo = url
    if "application_name" not in conninfo_to_dict(conninfo):  # how pg_stat_activity names its connections
        conninfo = make_conninfo(conninfo, application_name=APPLICATION_NAME)
    return make_conninfo(conninfo, **KEEPALIVE)


_MIGRATION_LOCK = "SELECT pg_advisory_lock(hashtext('task-queue migrations ' || current_schema()))"
_MIGRATION_UNLOCK = "SELECT pg_advisory_unlock(hashtext('task-queue migrations ' || current_schema()))"


def migrate(conn: PgConnection, migrations: tuple[tuple[int, tuple[str, ...]], ...]) -> tuple[int, list[int]]:
    """Apply the migrations not applied yet, each in its own transaction, holding an advisory lock
    so that of several instances starting at once, one migrates and the others wait. The version
    now in force, and the versions applied."""
    conn.execute(_MIGRATION_LOCK)  # a session's lock: released below, or when the connection closes
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        version, applied = 0, []
        for target, statements in migrations:
            conn.execute("BEGIN")
            try:
                if not conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (target,)).fetchone():
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (target, utc_now())
                    )
                    applied.append(target)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            version = target
        return version, applied
    finally:
        conn.execute(_MIGRATION_UNLOCK)
