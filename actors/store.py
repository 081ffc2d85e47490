"""StoreActor: the only writer of the database, committing writes in groups.

Protocol
    receives  :class:`~actors.messages.InsertTask`   -> after commit: sets ``committed``,
                                                       tells ``reply_to`` TasksStored
              :class:`~actors.messages.MarkRunning`, :class:`~actors.messages.CompleteTask`,
              :class:`~actors.messages.RetryTask`, :class:`~actors.messages.FailTask` -> written
              :class:`~actors.messages.RequeueUnfinished` -> tells ``reply_to`` Recovered
              :class:`~actors.messages.FetchReady`   -> tells ``reply_to`` ReadyTasks
              :class:`~actors.messages.Flush`        (sent to itself) -> commits
              :class:`~actors.messages.RetryWrites`  (its timer) -> writes unsaved updates again
    replies   nothing: answers go out as messages or through the ``committed`` futures

Group commit: the first write after a commit opens a transaction and puts a ``Flush`` at
the end of the inbox. Every write that arrived before that ``Flush`` joins the same
transaction, so under load one commit (one fsync) serves many writes, and when idle a
single write is committed at once. Reads that feed the queue commit first, so the queue
never sees a task that is not committed.

Faults (the database busy, read-only or full): the transaction is rolled back. Its inserts
are refused through their futures (the client gets 503, never a 202 for a task that is not
committed). Its status updates are kept, in order, and written again first thing in the
next transaction; if nothing else comes, a timer retries them every ``RETRY_S``. So the
store recovers by itself once the fault clears.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import defaultdict
from typing import Any

import pykka

from actors.base import Actor
from actors.db import connect_writer, epoch_now, utc_now
from actors.messages import (
    CompleteTask,
    FailTask,
    FetchReady,
    Flush,
    InsertTask,
    MarkRunning,
    QueuedTask,
    ReadyTasks,
    Recovered,
    RequeueUnfinished,
    RetryTask,
    RetryWrites,
    TasksStored,
)
from actors.timers import tell_later

__all__ = ["StoreActor", "StoreError"]

logger = logging.getLogger(__name__)

RETRY_S = 0.5  # how soon unsaved updates, and a fetch that failed, are tried again
Update = tuple[str, tuple[Any, ...]]  # a status update as SQL and parameters


class StoreError(Exception):
    """Raised (through a ``committed`` future) when a task could not be committed."""


class StoreActor(Actor):
    """Receives task writes and FetchReady; commits in groups; replies by message."""

    def __init__(
        self, db_path: str, synchronous: str = "FULL", busy_timeout_ms: int = 2000, max_pages: int = 0
    ) -> None:
        super().__init__()
        self._db_path = db_path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._max_pages = max_pages
        self._conn: sqlite3.Connection | None = None
        self._in_transaction = False
        self._inserted: list[InsertTask] = []  # inserts in the open transaction
        self._updates: list[Update] = []  # status updates in the open transaction
        self._unsaved: list[Update] = []  # status updates rolled back by a fault, to write again
        self._retry_timer: threading.Timer | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "the store is not started"
        return self._conn

    def on_start(self) -> None:
        self._conn = connect_writer(self._db_path, self._synchronous, self._busy_timeout_ms, self._max_pages)

    def on_stop(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        try:
            self._commit()
        except sqlite3.OperationalError as e:
            self._abort(e, Flush())
        if self._unsaved:
            logger.error("stopping with %d status updates unsaved; those tasks run again", len(self._unsaved))
        self.conn.close()

    def on_failure(self, *exc_info: Any) -> None:
        if self._conn is not None:
            self._conn.close()

    def on_receive(self, message: Any) -> None:
        try:
            self._handle(message)
        except sqlite3.OperationalError as e:  # busy, read-only, disk full, I/O error
            self._abort(e, message)

    def _handle(self, message: Any) -> None:
        match message:
            case InsertTask():
                self._insert(message)
            case MarkRunning(task_id, started_at):
                self._update(
                    "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ? WHERE id = ?",
                    (started_at, task_id),
                )
            case CompleteTask(task_id, result, processed_at):
                self._update(
                    "UPDATE tasks SET status = 'completed', result = ?, error = NULL, processed_at = ? WHERE id = ?",
                    (result, processed_at, task_id),
                )
            case RetryTask(task_id, error, available_at):
                self._update(
                    "UPDATE tasks SET status = 'queued', error = ?, available_at = ? WHERE id = ?",
                    (error, available_at, task_id),
                )
            case FailTask(task_id, error, processed_at):
                self._update(
                    "UPDATE tasks SET status = 'failed', error = ?, processed_at = ? WHERE id = ?",
                    (error, processed_at, task_id),
                )
            case RequeueUnfinished(max_attempts, reply_to):
                self._requeue_unfinished(max_attempts)
                _reply(reply_to, Recovered(self._count_unfinished()))
            case FetchReady(limit, reply_to):
                self._commit()
                _reply(reply_to, self._fetch_ready(limit))
            case Flush():
                self._commit()
            case RetryWrites():
                self._retry_timer = None
                self._commit()
            case _:
                raise TypeError(f"unexpected message {message!r}")

    def _insert(self, message: InsertTask) -> None:
        task = message.task
        self._inserted.append(message)
        self._begin()
        if not message.committed.claim():  # its submitter gave up waiting, and was told it is not stored
            self._inserted.pop()
            return
        try:
            self.conn.execute(
                "INSERT INTO tasks (id, action, payload, status, attempts, created_at, available_at)"
                " VALUES (?, ?, ?, 'queued', 0, ?, ?)",
                (task.id, task.action, task.payload, task.created_at, epoch_now()),
            )
        except sqlite3.IntegrityError as e:  # only this statement failed; the transaction goes on
            logger.error("task %s not stored: %s", task.id, e)
            self._inserted.remove(message)
            message.committed.set_exception((StoreError, StoreError("task not stored"), None))

    def _update(self, sql: str, params: tuple[Any, ...]) -> int:
        """Write a status update in the open transaction; return the number of rows it changed."""
        self._updates.append((sql, params))
        self._begin()
        return self.conn.execute(sql, params).rowcount

    def _begin(self) -> None:
        """Open a transaction if none is open, first writing again what a fault rolled back."""
        if self._in_transaction:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        self.actor_ref.tell(Flush())
        unsaved, self._unsaved = self._unsaved, []
        self._updates[:0] = unsaved
        for sql, params in unsaved:
            self.conn.execute(sql, params)
        if unsaved:
            logger.info("wrote %d status updates again after a fault", len(unsaved))

    def _commit(self) -> None:
        if not self._in_transaction:
            if not self._unsaved:
                return
            self._begin()
        self.conn.execute("COMMIT")  # if this fails, _abort refuses the inserts and keeps the updates
        inserted, self._inserted = self._inserted, []
        self._updates.clear()
        self._in_transaction = False
        # The queue hears of the tasks before their submitters do, so once a 202 is out the
        # queue already holds the news of that task.
        stored_by_queue: defaultdict[pykka.ActorRef[Any], list[QueuedTask]] = defaultdict(list)
        for message in inserted:
            task = message.task
            stored_by_queue[message.reply_to].append(QueuedTask(task.id, task.action, task.payload, attempts=0))
        for queue, tasks in stored_by_queue.items():
            _reply(queue, TasksStored(tuple(tasks)))
        for message in inserted:
            message.committed.set(None)

    def _abort(self, error: sqlite3.Error, message: Any) -> None:
        """Roll back: refuse the transaction's inserts, keep its updates to write again later."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self._in_transaction = False
        inserted, self._inserted = self._inserted, []
        self._unsaved += self._updates  # oldest first: _begin puts earlier unsaved ones in front
        self._updates = []
        logger.error(
            "store write failed on %s: %s; %d new tasks refused, %d status updates kept to write again",
            type(message).__name__,
            error,
            len(inserted),
            len(self._unsaved),
        )
        for insert in inserted:
            insert.committed.set_exception((StoreError, StoreError("the store cannot write now"), None))
        if isinstance(message, FetchReady):  # nothing fetched: the queue asks again soon
            _reply(message.reply_to, ReadyTasks((), next_due_at=epoch_now() + RETRY_S))
        if self._unsaved and self._retry_timer is None:
            self._retry_timer = tell_later(self.actor_ref, RetryWrites(), RETRY_S)

    def _requeue_unfinished(self, max_attempts: int) -> None:
        failed = self._update(
            "UPDATE tasks SET status = 'failed', processed_at = ?,"
            " error = 'interrupted on each of its ' || attempts || ' attempts'"
            " WHERE status = 'running' AND attempts >= ?",
            (utc_now(), max_attempts),
        )
        requeued = self._update(
            "UPDATE tasks SET status = 'queued', available_at = ? WHERE status = 'running'", (epoch_now(),)
        )
        self._commit()
        if failed or requeued:
            logger.warning("recovered tasks left running by a previous run: %d re-queued, %d failed", requeued, failed)

    def _count_unfinished(self) -> int:
        count: int = self.conn.execute("SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')").fetchone()[0]
        return count

    def _fetch_ready(self, limit: int) -> ReadyTasks:
        now = epoch_now()
        rows = self.conn.execute(
            "SELECT id, action, payload, attempts FROM tasks"
            " WHERE status = 'queued' AND available_at <= ? ORDER BY available_at, seq LIMIT ?",
            (now, limit),
        ).fetchall()
        next_due_at = None
        if len(rows) < limit:
            next_due_at = self.conn.execute(
                "SELECT MIN(available_at) FROM tasks WHERE status = 'queued' AND available_at > ?", (now,)
            ).fetchone()[0]
        return ReadyTasks(tuple(QueuedTask(*row) for row in rows), next_due_at)


def _reply(to: pykka.ActorRef[Any], message: Any) -> None:
    """Tell ``to``, unless it has stopped: a stopping queue must not take the store down with it,
    since the store still has writes to commit. What the queue misses, a restart recovers."""
    try:
        to.tell(message)
    except pykka.ActorDeadError:
        logger.debug("%s stopped; %s not delivered", to, type(message).__name__)
