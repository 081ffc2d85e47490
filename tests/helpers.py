"""Helpers the tests share: polling with a deadline, and an actor that records what it receives."""

from __future__ import annotations

import os
import queue
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg.rows
import pykka

from actors.db import utc_now
from actors.messages import Instance
from actors.postgres import PostgresEngine

T = TypeVar("T")

DEADLINE_S = 10.0


def wait_until(condition: Callable[[], T | None], timeout: float = DEADLINE_S, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def an_instance(name: str) -> Instance:
    """An instance of the distributed mode, as its stores know it."""
    return Instance(name, "test-host", os.getpid(), utc_now())


def busy_for(seconds: float) -> None:
    """Run Python code for ``seconds``, as an action that ignores its timeout does; unlike one long
    sleep, it can be interrupted between bytecodes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


class Recorder(pykka.ThreadingActor):
    """Stands in for an actor: every message it receives goes to ``inbox`` for the test to read."""

    def __init__(self, inbox: queue.Queue[Any]) -> None:
        super().__init__()
        self._inbox = inbox

    def on_receive(self, message: Any) -> None:
        self._inbox.put(message)


def start_recorder() -> tuple[pykka.ActorRef[Any], queue.Queue[Any]]:
    inbox: queue.Queue[Any] = queue.Queue()
    return Recorder.start(inbox), inbox


def receive(inbox: queue.Queue[Any], kind: type[T], timeout: float = DEADLINE_S) -> T:
    """The next message in ``inbox``, which must be a ``kind``."""
    try:
        message = inbox.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {kind.__name__} within {timeout} s") from None
    assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
    return message


def query(database: str | PostgresEngine, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of ``sql`` (with ``?`` placeholders; by column name), read through a connection of the
    test's own: from a SQLite file, or PostgreSQL (an engine, or a postgresql:// URL)."""
    url = database.url if isinstance(database, PostgresEngine) else database
    if url.startswith("postgresql://"):
        with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as pg:
            return pg.execute(sql.replace("?", "%s"), params).fetchall()
    conn = sqlite3.connect(url)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def row(database: str | PostgresEngine, task_id: str) -> Any:
    """The task's row, read through a connection of the test's own (see :func:`query`)."""
    rows = query(database, "SELECT * FROM tasks WHERE id = ?", (task_id,))
    return rows[0] if rows else None


LOCK_SCRIPT = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class WriteLockHolder:
    """Another process that holds the database's write lock until ``release``."""

    def __init__(self, db_path: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", LOCK_SCRIPT, db_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.write("\n")
            self._process.stdin.close()
            self._process.wait(10)
        assert self._process.stdout is not None
        self._process.stdout.close()


def set_immutable(paths: list[str], immutable: bool) -> None:
    """Make files read-only even to root (``chattr +i``): writes through open handles fail too."""
    for path in paths:
        if os.path.exists(path):
            flag = "+i" if immutable else "-i"
            done = subprocess.run(["chattr", flag, path], check=False, capture_output=True, text=True)
            assert done.returncode == 0, f"chattr needs root and a filesystem with attributes: {done.stderr}"


def damage(db_path: str, seed: int = 1) -> None:
    """Write random bytes over every other page of the file after its first two (the schema survives)."""
    rng = random.Random(seed)
    with open(db_path, "r+b") as f:
        header = f.read(100)
        page_size = int.from_bytes(header[16:18], "big")
        pages = os.path.getsize(db_path) // page_size
        for page in range(3, pages + 1, 2):  # numbered from 1
            f.seek((page - 1) * page_size)
            f.write(rng.randbytes(page_size))
