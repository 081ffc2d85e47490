"""Engines: where the store keeps the tasks. SQLite (one file, one process) is the default;
PostgreSQL (:mod:`actors.postgres`) serves many instances at once.

An engine opens connections and says what differs in its SQL (its :class:`~actors.db.Dialect`).
The StoreActor writes through one writer connection, the readers through their own; neither
knows which engine it has.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from actors.db import BUSY_TIMEOUT_MS, SQLITE, Dialect, connect_reader, connect_writer
from conf import StoreConfig

__all__ = ["Connection", "Engine", "SqliteEngine", "engine_for", "safe_url"]


class Connection(Protocol):
    """What the store and the readers use of a connection (sqlite3's, or one that works like it)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def close(self) -> None: ...


class Engine(Protocol):
    dialect: Dialect
    where: str  #: what logs name: the database file, or the server and database (never a password)

    def connect_writer(self) -> Connection: ...

    def connect_reader(self) -> Connection: ...

    def moved(self) -> bool:
        """Whether the database the writer opened is no longer the one at its address (a file deleted)."""
        ...


class SqliteEngine:
    """A SQLite file; its writer is the only one (see :mod:`actors.dblock`)."""

    dialect = SQLITE

    def __init__(
        self, path: str, synchronous: str = "FULL", busy_timeout_ms: int = BUSY_TIMEOUT_MS, max_pages: int = 0
    ) -> None:
        self.path = path
        self.where = str(Path(path).resolve())
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._max_pages = max_pages
        self._file_id: tuple[int, int] | None = None

    def connect_writer(self) -> Connection:
        conn = connect_writer(self.path, self._synchronous, self._busy_timeout_ms, self._max_pages)
        self._file_id = _file_id(self.path)
        return conn

    def connect_reader(self) -> Connection:
        return connect_reader(self.path)

    def moved(self) -> bool:
        """Whether the file at the path is no longer the file the writer opened (deleted or replaced)."""
        return _file_id(self.path) != self._file_id


def _file_id(path: str) -> tuple[int, int] | None:
    """What the file at ``path`` is: (device, inode), or None if there is none (or it cannot be looked at)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def engine_for(config: StoreConfig) -> Engine:
    """The engine the configuration names: PostgreSQL at ``url`` if set, else the SQLite file at ``path``."""
    if config.url:
        from actors.postgres import PostgresEngine  # (psycopg loads only in the distributed mode)

        return PostgresEngine(config.url)
    return SqliteEngine(config.path, config.synchronous, config.busy_timeout_ms, config.max_pages)


def safe_url(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()
