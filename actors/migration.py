"""MigrationActor: brings the database schema up to date once, then stops.

Protocol
    receives  :class:`~actors.messages.Migrate` (sent with ``ask`` by start-up)
    replies   the schema version now in force (``int``), or raises the migration's error
              (:class:`DatabaseDamaged` for a file SQLite cannot read)
    then      stops itself; nothing else is written to the database before it has replied

Before migrating, it checks the file with ``PRAGMA quick_check`` (0.4 s for 1,000,000 tasks
with the file in the page cache, 4 s from a cold disk; ``store.check_on_start`` turns it
off), so a damaged file stops the start with SQLite's error and what to do, instead of
failing later on some page.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the row that
records its version in ``schema_migrations``, so a failed migration leaves the previous
version intact, and two processes starting at once apply each migration once.

On PostgreSQL (:class:`~actors.postgres.PostgresEngine`) the migrations are
:data:`actors.postgres.MIGRATIONS`, applied under an advisory lock: of many instances
starting at once, one migrates and the others wait, then find them applied.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from actors.base import Actor
from actors.db import MIGRATIONS, connect_writer, is_damage, utc_now
from actors.engine import Engine
from actors.messages import Migrate

__all__ = ["DatabaseDamaged", "MigrationActor"]

logger = logging.getLogger(__name__)

Migrations = tuple[tuple[int, tuple[str, ...]], ...]


class DatabaseDamaged(Exception):
    """Raised when the database file is damaged; the message says how to recover."""

    def __init__(self, path: str, error: str) -> None:
        error = error.replace("\n", "; ")  # quick_check's report comes on several lines
        super().__init__(
            f"the database file {path} is damaged: {error}. Stop here: restore it from a backup, or move it"
            f" (with its -wal file) aside to start with an empty one; `sqlite3 {path} .recover` may save what is left"
        )


class SchemaMissing(Exception):
    """Raised when the PostgreSQL schema the configuration names does not exist."""


class MigrationActor(Actor):
    """Receives Migrate; replies the schema version; then stops."""

    def __init__(self, database: str | Engine, migrations: Migrations = MIGRATIONS, check: bool = True) -> None:
        super().__init__()
        self._server = None if isinstance(database, str) or database.dialect.name == "sqlite" else database
        self._db_path = database if isinstance(database, str) else getattr(database, "path", database.where)
        self._migrations = migrations
        self._check = check

    def on_receive(self, message: Any) -> Any:
        match message:
            case Migrate():
                try:
                    return self._migrate()
                finally:
                    self.stop()
            case _:
                raise TypeError(f"unexpected message {message!r}")

    def _migrate(self) -> int:
        if self._server is not None:
            return self._migrate_server(self._server)
        try:
            conn = connect_writer(self._db_path)
        except sqlite3.DatabaseError as e:
            raise _damaged_or(e, self._db_path) from e
        try:
            if self._check:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
                if problems != ["ok"]:
                    raise DatabaseDamaged(self._db_path, "; ".join(problems))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            version = 0
            for target, statements in self._migrations:
                version = self._apply(conn, target, statements)
            return version
        except sqlite3.DatabaseError as e:
            raise _damaged_or(e, self._db_path) from e
        finally:
            conn.close()

    def _migrate_server(self, engine: Engine) -> int:
        from actors import postgres  # (psycopg loads only in the distributed mode)

        conn = engine.connect_writer()
        assert isinstance(conn, postgres.PgConnection)
        try:
            version, applied = postgres.migrate(conn, postgres.MIGRATIONS)
        except postgres.InvalidSchemaName as e:
            raise SchemaMissing(
                f"the schema that store.url names (options=-csearch_path=...) does not exist in {engine.where}:"
                " create it first (CREATE SCHEMA ...), or leave the search path out to use public"
            ) from e
        finally:
            conn.close()
        for target in applied:
            logger.info("applied schema migration %d to %s", target, engine.where)
        return version

    def _apply(self, conn: sqlite3.Connection, version: int, statements: tuple[str, ...]) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                conn.execute("ROLLBACK")
                return version
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, utc_now()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        logger.info("applied schema migration %d to %s", version, self._db_path)
        return version


def _damaged_or(error: sqlite3.DatabaseError, path: str) -> Exception:
    """A damaged file's error, with what to do; any other error as it is."""
    if is_damage(error):
        return DatabaseDamaged(path, str(error))
    return error
