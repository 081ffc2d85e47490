"""Helpers the tests share: polling with a deadline, and an actor that records what it receives."""

from __future__ import annotations

import queue
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

T = TypeVar("T")

DEADLINE_S = 10.0


def wait_until(condition: Callable[[], T], timeout: float = DEADLINE_S, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


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


def row(db_path: str, task_id: str) -> sqlite3.Row | None:
    """The task's row, read through a connection of the test's own."""
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    finally:
        conn.close()


def count(db_path: str, where: str = "1", params: tuple[Any, ...] = ()) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM tasks WHERE {where}", params).fetchone()[0]
    finally:
        conn.close()
