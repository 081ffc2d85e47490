"""MigrationActor: brings the database schema up to date once, then stops.

Protocol
    receives  :class:`~actors.messages.Migrate` (sent with ``ask`` by start-up)
    replies   the schema version now in force (``int``), or raises the migration's error
    then      stops itself; nothing else is written to the database before it has replied

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the row that
records its version in ``schema_migrations``, so a failed migration leaves the previous
version intact, and two processes starting at once apply each migration once.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from actors.base import Actor
from actors.db import MIGRATIONS, connect_writer, utc_now
from actors.messages import Migrate

__all__ = ["MigrationActor"]

logger = logging.getLogger(__name__)

Migrations = tuple[tuple[int, tuple[str, ...]], ...]


class MigrationActor(Actor):
    """Receives Migrate; replies the schema version; then stops."""

    def __init__(self, db_path: str, migrations: Migrations = MIGRATIONS) -> None:
        super().__init__()
        self._db_path = db_path
        self._migrations = migrations

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
        conn = connect_writer(self._db_path)
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            version = 0
            for target, statements in self._migrations:
                version = self._apply(conn, target, statements)
            return version
        finally:
            conn.close()

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
