"""StoreActor: the only writer of the database, committing writes in groups.

Protocol
    receives  :class:`~actors.messages.InsertTask`   -> after commit: sets ``committed``,
                                                       tells ``reply_to`` TasksStored
              :class:`~actors.messages.MarkRunning`, :class:`~actors.messages.CompleteTask`,
              :class:`~actors.messages.RetryTask`, :class:`~actors.messages.FailTask`,
              :class:`~actors.messages.RequeueUnfinished`            -> written, no reply
              :class:`~actors.messages.FetchReady`   -> tells ``reply_to`` ReadyTasks
              :class:`~actors.messages.Flush`        (sent to itself) -> commits
    replies   nothing: answers go out as messages or through the ``committed`` futures

Group commit: the first write after a commit opens a transaction and puts a ``Flush`` at
the end of the inbox. Every write that arrived before that ``Flush`` joins the same
transaction, so under load one commit (one fsync) serves many writes, and when idle a
single write is committed at once. Reads that feed the queue commit first, so the queue
never sees a task that is not committed.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from typing import Any

import pykka

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
    RequeueUnfinished,
    RetryTask,
    TasksStored,
)

__all__ = ["StoreActor", "StoreError"]

logger = logging.getLogger(__name__)

FETCH_RETRY_S = 1.0


class StoreError(Exception):
    """Raised (through a ``committed`` future) when a task could not be committed."""


class StoreActor(pykka.ThreadingActor):
    """Receives task writes and FetchReady; commits in groups; replies by message."""

    def __init__(self, db_path: str, synchronous: str = "FULL") -> None:
        super().__init__()
        self._db_path = db_path
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._in_transaction = False
        self._inserted: list[InsertTask] = []  # inserts waiting for the next commit
        self._writes_in_transaction = 0

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "the store is not started"
        return self._conn

    def on_start(self) -> None:
        self._conn = connect_writer(self._db_path, self._synchronous)

    def on_stop(self) -> None:
        self._commit()
        self.conn.close()

    def on_failure(self, *exc_info: Any) -> None:
        if self._conn is not None:
            self._conn.close()

    def on_receive(self, message: Any) -> None:
        try:
            self._handle(message)
        except sqlite3.OperationalError as e:  # busy, disk full, read-only: the batch is lost
            self._abort(e, message)

    def _handle(self, message: Any) -> None:
        match message:
            case InsertTask():
                self._insert(message)
            case MarkRunning(task_id, started_at):
                self._write(
                    "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ? WHERE id = ?",
                    (started_at, task_id),
                )
            case CompleteTask(task_id, result, processed_at):
                self._write(
                    "UPDATE tasks SET status = 'completed', result = ?, error = NULL, processed_at = ? WHERE id = ?",
                    (result, processed_at, task_id),
                )
            case RetryTask(task_id, error, available_at):
                self._write(
                    "UPDATE tasks SET status = 'queued', error = ?, available_at = ? WHERE id = ?",
                    (error, available_at, task_id),
                )
            case FailTask(task_id, error, processed_at):
                self._write(
                    "UPDATE tasks SET status = 'failed', error = ?, processed_at = ? WHERE id = ?",
                    (error, processed_at, task_id),
                )
            case RequeueUnfinished(max_attempts):
                self._requeue_unfinished(max_attempts)
            case FetchReady(limit, reply_to):
                self._commit()
                reply_to.tell(self._fetch_ready(limit))
            case Flush():
                self._commit()
            case _:
                raise TypeError(f"unexpected message {message!r}")

    def _insert(self, message: InsertTask) -> None:
        task = message.task
        self._inserted.append(message)
        try:
            self._write(
                "INSERT INTO tasks (id, action, payload, status, attempts, created_at, available_at)"
                " VALUES (?, ?, ?, 'queued', 0, ?, ?)",
                (task.id, task.action, task.payload, task.created_at, epoch_now()),
            )
        except sqlite3.IntegrityError as e:
            logger.error("task %s not stored: %s", task.id, e)
            self._inserted.remove(message)
            message.committed.set_exception((StoreError, StoreError(str(e)), None))

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        if not self._in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
            self.actor_ref.tell(Flush())
        self._writes_in_transaction += 1
        return self.conn.execute(sql, params)

    def _commit(self) -> None:
        if not self._in_transaction:
            return
        self.conn.execute("COMMIT")  # if this fails, _abort refuses the inserts
        inserted, self._inserted = self._inserted, []
        self._writes_in_transaction = 0
        self._in_transaction = False
        # The queue hears of the tasks before their submitters do, so once a 202 is out the
        # queue already holds the news of that task.
        stored_by_queue: defaultdict[pykka.ActorRef[Any], list[QueuedTask]] = defaultdict(list)
        for message in inserted:
            task = message.task
            stored_by_queue[message.reply_to].append(QueuedTask(task.id, task.action, task.payload, attempts=0))
        for queue, tasks in stored_by_queue.items():
            queue.tell(TasksStored(tuple(tasks)))
        for message in inserted:
            message.committed.set(None)

    def _abort(self, error: sqlite3.Error, message: Any) -> None:
        """Roll back the open transaction; the tasks it inserted are refused, not lost."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        inserted, self._inserted = self._inserted, []
        lost_updates = self._writes_in_transaction - len(inserted)
        self._writes_in_transaction = 0
        self._in_transaction = False
        logger.error(
            "store write failed (%s) on %s: %d inserts refused, %d updates lost",
            error,
            type(message).__name__,
            len(inserted),
            lost_updates,
        )
        for insert in inserted:
            insert.committed.set_exception((StoreError, StoreError(str(error)), None))
        if isinstance(message, FetchReady):  # nothing fetched: the queue asks again in a second
            message.reply_to.tell(ReadyTasks((), next_due_at=epoch_now() + FETCH_RETRY_S))

    def _requeue_unfinished(self, max_attempts: int) -> None:
        failed = self._write(
            "UPDATE tasks SET status = 'failed', processed_at = ?,"
            " error = 'interrupted on each of its ' || attempts || ' attempts'"
            " WHERE status = 'running' AND attempts >= ?",
            (utc_now(), max_attempts),
        ).rowcount
        requeued = self._write(
            "UPDATE tasks SET status = 'queued', available_at = ? WHERE status = 'running'", (epoch_now(),)
        ).rowcount
        self._commit()
        if failed or requeued:
            logger.warning("recovered tasks left running by a previous run: %d re-queued, %d failed", requeued, failed)

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
