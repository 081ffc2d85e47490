"""Bulk requests in the store: batch by batch, and what the asker and the queue hear when a batch fails
or the store stops on the way."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pykka
import pytest

import actors.store
from actors.db import TaskFilter, utc_now
from actors.messages import CancelQueuedMatching, MatchingCancelled, Migrate, RetryMatching
from actors.migration import MigrationActor
from actors.store import StoreActor, StoreError
from tests.helpers import receive, start_recorder


class FailingCommit:
    """The store's connection, but its ``fail_at``-th COMMIT fails as a full disk would: a fault at one
    exact commit cannot be made with a real disk in a test."""

    def __init__(self, conn: sqlite3.Connection, fail_at: int) -> None:
        self._conn = conn
        self._commits = 0
        self._fail_at = fail_at

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            self._commits += 1
            if self._commits == self._fail_at:
                raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class StoreFailingAtCommit(StoreActor):
    def __init__(self, db_path: str, fail_at: int) -> None:
        super().__init__(db_path)
        self._fail_at = fail_at

    def on_start(self) -> None:
        super().on_start()
        self._conn = FailingCommit(self.conn, self._fail_at)  # type: ignore[assignment]


def fill(db_path: str, n: int, status: str) -> None:
    MigrationActor.start(db_path).ask(Migrate(), timeout=10)
    conn = sqlite3.connect(db_path)
    now = utc_now()  # one created_at for all: the batches' cursor must not trip on ties
    conn.executemany(
        "INSERT INTO tasks (id, action, payload, status, attempts, created_at, available_at) VALUES (?, 'x', '{}', ?,"
        " 0, ?, ?)",
        [(f"t{i}", status, now, time.time()) for i in range(n)],
    )
    conn.commit()
    conn.close()


def statuses(db_path: str) -> dict[str, int]:
    conn = sqlite3.connect(db_path)
    found = dict(conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status").fetchall())
    conn.close()
    return found


def cancel_every_queued_task(store: pykka.ActorRef[Any]) -> tuple[MatchingCancelled, pykka.Future[int]]:
    """Ask ``store`` to cancel every queued task; what it tells the queue (played by the test), and the answer."""
    queue, inbox = start_recorder()
    answer: pykka.Future[int] = pykka.ThreadingFuture()
    store.tell(CancelQueuedMatching(TaskFilter(statuses=("queued",)), answer, queue))
    return receive(inbox, MatchingCancelled), answer


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actors.store, "BULK_BATCH", 100)


def test_a_bulk_cancel_goes_batch_by_batch_through_tied_times_and_each_task_once(db_path):
    fill(db_path, 350, "queued")
    told, _ = cancel_every_queued_task(StoreActor.start(db_path))
    assert (told.cancelled, told.running, told.written) == (350, (), True)
    assert statuses(db_path) == {"cancelled": 350}


def test_a_batch_that_cannot_commit_ends_the_request_with_what_was_done(db_path):
    fill(db_path, 350, "queued")
    told, answer = cancel_every_queued_task(StoreFailingAtCommit.start(db_path, fail_at=2))  # the 2nd batch's commit
    assert (told.cancelled, told.written) == (100, False), "the queue hears what was committed"
    with pytest.raises(StoreError, match="100 tasks were changed before, ask again for the rest"):
        answer.get(timeout=10)
    assert statuses(db_path) == {"cancelled": 100, "queued": 250}


def test_a_bulk_request_under_way_when_the_store_stops_is_answered(db_path):
    fill(db_path, 5000, "failed")
    store = StoreActor.start(db_path)
    queue, _ = start_recorder()
    answer: pykka.Future[int] = pykka.ThreadingFuture()
    store.tell(RetryMatching(TaskFilter(statuses=("failed",)), answer, queue))
    store.stop(timeout=10)

    try:
        done = answer.get(timeout=1)  # it finished before the stop
    except StoreError as e:
        assert "the service stopped" in str(e)
        done = int(str(e).split("; ")[1].split()[0])
    assert statuses(db_path).get("queued", 0) == done
