"""CommitSignal: the future a submitter waits on until its task is committed.

Every ``POST /tasks`` waits on one, so it is built for that: set once (by the store) and
awaited by one thread (the request's). pykka's ThreadingFuture builds on a
``threading.Condition``, which allocates a lock per wait and notifies in Python; this one
is a single C lock, held until the answer is in. With 32 threads submitting straight to the
actors, it took the CPU per submit from 204 to 170 µs (median of 5 runs).

It also settles who owns the task when the wait times out. The store claims a task just
before it inserts it; a submitter that gives up waiting claims it too. Only the first claim
succeeds, so either the store inserts the task, or the submitter knows it never will and
can answer "not stored" rather than "perhaps stored".
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any

import pykka
from pykka._types import OptExcInfo  # the exc_info triple pykka's futures carry

__all__ = ["CommitSignal"]


class CommitSignal(pykka.Future[str | None]):
    """A pykka Future that is set once and read by any number of ``get`` calls.

    Its value is None for a task committed now, or the id of the task an earlier submit with the
    same idempotency key committed."""

    def __init__(self) -> None:
        super().__init__()
        self._answered = threading.Lock()
        self._answered.acquire()  # released by set or set_exception
        self._exc_info: OptExcInfo | None = None
        self._value: str | None = None
        self._done = False
        self._claimed = threading.Lock()

    def claim(self) -> bool:
        """Take the task: True for the first caller (the store, or the submitter giving up), else False."""
        return self._claimed.acquire(blocking=False)

    def get(self, *, timeout: float | None = None) -> str | None:
        if not self._answered.acquire(timeout=-1 if timeout is None else timeout):
            raise pykka.Timeout(f"{timeout} seconds")
        self._answered.release()  # a later get answers at once
        if self._exc_info is not None:
            exc_type, exc_value, _ = self._exc_info
            assert exc_type is not None
            raise exc_value if exc_value is not None else exc_type()
        return self._value

    def set(self, value: Any = None) -> None:
        self._value = value
        self._answer(None)

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        self._answer(exc_info or sys.exc_info())

    def _answer(self, exc_info: OptExcInfo | None) -> None:
        if self._done:
            raise queue.Full  # as pykka's futures do
        self._done = True
        self._exc_info = exc_info
        self._answered.release()
