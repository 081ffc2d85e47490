"""StoreActor: the only writer of the database, committing writes in groups.

Protocol
    receives  :class:`~actors.messages.InsertTask`   -> after commit: sets ``committed``,
                                                       tells ``reply_to`` TasksStored
              :class:`~actors.messages.MarkRunning`, :class:`~actors.messages.CompleteTask`,
              :class:`~actors.messages.RetryTask`, :class:`~actors.messages.FailTask` -> written
              :class:`~actors.messages.CancelQueued`  -> after commit: answers, tells ``reply_to`` TaskCancelled
              :class:`~actors.messages.CancelRunning`, :class:`~actors.messages.DeleteTask` -> after commit: answers
              :class:`~actors.messages.RetryFinished` -> after commit: answers, tells ``reply_to`` TasksStored
              :class:`~actors.messages.RetryMatching` -> after commit: answers, tells ``reply_to`` Requeued
              :class:`~actors.messages.CancelQueuedMatching` -> after commit: tells ``reply_to`` MatchingCancelled
              :class:`~actors.messages.SavePaused`   -> after commit: answers
              :class:`~actors.messages.RequeueUnfinished` -> tells ``reply_to`` Recovered
              :class:`~actors.messages.FetchReady`   -> tells ``reply_to`` ReadyTasks
              :class:`~actors.messages.Flush`        (sent to itself) -> commits
              :class:`~actors.messages.RetryWrites`  (its timer, while a fault lasts) -> tries a write again
              :class:`~actors.messages.Prune`        (its timer, with a retention) -> deletes old finished tasks
              :class:`~actors.messages.Inspect`      (edges, by ask)
              :class:`~actors.messages.FileMoved`    (sent to itself) -> stops (raises)
              (the distributed mode's, from a BrokerQueueActor:)
              :class:`~actors.messages.LeaseDue`     -> leases tasks to publish, sweeps; tells ``reply_to`` Leased
              :class:`~actors.messages.MarkPublished`, :class:`~actors.messages.Started` -> written
              :class:`~actors.messages.ClaimTasks`   -> after commit: tells ``reply_to`` Claimed
              :class:`~actors.messages.Settle`       -> after commit: tells ``reply_to`` Settled
              :class:`~actors.messages.Tick`         (its timer, on PostgreSQL) -> folds the counts, and
                                                       records that its instance is alive
    replies   to Inspect: a :class:`~actors.messages.StoreState`; nothing else: answers go out as
              messages or through the ``committed`` futures

Group commit: the first write after a commit opens a transaction and puts a ``Flush`` at
the end of the inbox. Every write that arrived before that ``Flush`` joins the same
transaction, so under load one commit (one fsync) serves many writes, and when idle a
single write is committed at once. Reads that feed the queue commit first, so the queue
never sees a task that is not committed.

Faults (the database busy, read-only or full): the transaction is rolled back. Its inserts
are refused through their futures (the client gets 503, never a 202 for a task that is not
committed). Its status updates are kept, in order, and written again first thing in the
next transaction. While the fault lasts a timer tries a write (those updates, or a probe
that changes nothing) after a backoff of 0.5 s, doubling up to 5 s, so the store recovers
by itself once the fault clears, even when no new writes come. A fault is
logged once when it starts, summed up at most every ``SUMMARY_S`` while it lasts, and
logged once more when it clears; ``Inspect`` reports it, for ``/health``.

Fatal, so the store dies and the process stops (let it crash): the database file at its
path is no longer the file it writes (deleted or replaced: checked with one ``stat`` after
each commit, and the inserts of that commit are refused), or SQLite finds it damaged.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import pykka

from actors import pg_sql
from actors.base import Actor
from actors.db import epoch_now, utc_from_epoch, utc_now
from actors.engine import Connection, Engine, SqliteEngine
from actors.messages import (
    BulkProgress,
    CancelQueued,
    CancelQueuedMatching,
    CancelRunning,
    Claimed,
    ClaimTasks,
    CompleteTask,
    ControlResult,
    DeleteTask,
    Delivered,
    FailTask,
    FetchReady,
    FileMoved,
    Flush,
    InsertTask,
    Inspect,
    Instance,
    Leased,
    LeaseDue,
    MarkPublished,
    MarkRunning,
    MatchingCancelled,
    NewTask,
    Prune,
    QueuedTask,
    ReadyTasks,
    Receipt,
    Recovered,
    ReleaseClaim,
    Requeued,
    RequeueUnfinished,
    RetryFinished,
    RetryMatching,
    RetryTask,
    RetryWrites,
    SavePaused,
    Settle,
    Settled,
    Started,
    StoreState,
    TaskCancelled,
    TasksStored,
    Tick,
)
from actors.metrics import Metrics
from actors.timers import tell_later

__all__ = ["CommitUnknown", "DatabaseMoved", "IdempotencyConflict", "StoreActor", "StoreError"]

logger = logging.getLogger(__name__)

RETRY_S = 0.5  # how soon unsaved updates, and a fetch that failed, are first tried again
RETRY_MAX_S = 5.0  # the longest wait between tries while a fault lasts
SUMMARY_S = 5.0  # while a fault lasts, at most one log line this often
PRUNE_BATCH = 500  # finished tasks deleted per transaction, with a retention set
PRUNE_EVERY_S = 60.0  # how often to look for tasks to prune, once none are left
BULK_BATCH = 1000  # tasks a bulk retry or cancel changes per transaction
MAX_PRIORITY_SEEKS = 100  # priorities a fetch reads one by one, skipping their tasks that are not due
Update = tuple[str, tuple[Any, ...]]  # a status update as SQL and parameters
# A control request's answer, given once its write is committed, and a message to send then.
ControlRequest = (
    CancelQueued | CancelRunning | RetryFinished | DeleteTask | RetryMatching | CancelQueuedMatching | SavePaused
)
# (None: the message sent then answers it.)
Answer = tuple["pykka.Future[Any] | None", Any, "tuple[pykka.ActorRef[Any], Any] | None"]
# A write that changes nothing but still writes a page, to find out whether a fault has cleared.
PROBE = (
    "UPDATE schema_migrations SET applied_at = applied_at WHERE version = (SELECT MAX(version) FROM schema_migrations)"
)


class StoreError(Exception):
    """Raised (through a ``committed`` future) when a task could not be committed; the message says why."""


class CommitUnknown(StoreError):
    """Raised (through a ``committed`` future) when the connection to the database server was lost during
    the commit: the task may be stored or not."""


class IdempotencyConflict(Exception):
    """Raised (through a ``committed`` future) when an idempotency key comes back with another request."""


class DatabaseMoved(Exception):
    """Raised when the file at the database's path is no longer the file the store writes."""


@dataclass
class Fault:
    """A write fault that has not cleared yet."""

    error: str  #: the error that started it
    since: float  #: monotonic time it started
    retry_s: float = RETRY_S  #: the wait before the next timed retry
    failures: int = 1  #: failed writes since the last log line
    all_failures: int = 1  #: failed writes since it started
    refused: int = 0  #: inserts refused since the last log line
    logged_at: float = 0.0  #: monotonic time of the last log line


class StoreActor(Actor):
    """Receives task writes and FetchReady; commits in groups; replies by message."""

    def __init__(
        self,
        database: str | Engine,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 2000,
        max_pages: int = 0,
        *,
        idempotency_window_s: float = 86400.0,
        retention_s: float = 0.0,
        metrics: Metrics | None = None,
        folds_counts: bool = True,
        instance: Instance | None = None,
    ) -> None:
        super().__init__()
        self._instance = instance  # (distributed mode) the instance this store writes for
        self._me = None if instance is None else instance.id
        self._folds_counts = folds_counts  # (PostgreSQL) this store folds the count changes, on its Tick
        if isinstance(database, str):
            database = SqliteEngine(database, synchronous, busy_timeout_ms, max_pages)
        self._engine: Engine = database
        self._dialect = database.dialect
        self._idempotency_window_s = idempotency_window_s
        self._retention_s = retention_s
        self._metrics = metrics
        self._prune_timer: threading.Timer | None = None
        self._pruned = 0  # tasks deleted by the pruning under way
        self._conn: Connection | None = None
        self._in_transaction = False
        self._inserted: list[InsertTask] = []  # inserts in the open transaction
        # Submits whose key was used before: the earlier task's id, or None for another request (a conflict).
        self._replayed: list[tuple[InsertTask, str | None]] = []
        self._updates: list[Update] = []  # status updates in the open transaction
        self._answers: list[Answer] = []  # control requests written in the open transaction
        self._unsaved: list[Update] = []  # status updates rolled back by a fault, to write again
        self._retry_timer: threading.Timer | None = None
        self._fault: Fault | None = None
        self._bulk: dict[int, RetryMatching | CancelQueuedMatching] = {}  # bulk requests under way: the next step
        self._held_inserts: list[InsertTask] = []  # inserts not written yet: see the conn property
        self._held_updates: list[Update] = []  # status updates not written yet: see _hold
        self._settling: list[tuple[pykka.ActorRef[Any], Receipt]] = []  # deliveries to ack after the commit
        self._unsettled: list[tuple[pykka.ActorRef[Any], Receipt]] = []  # theirs, after a fault rolled them back
        self._tick_timer: threading.Timer | None = None
        self._commit_unknown = False  # the last commit failed with its outcome unknown (the connection was lost)
        self._swept_at = 0.0  # when the store last looked for tasks whose message was lost
        self._counted_at = 0.0  # when a lease last counted the unfinished tasks
        self._faultless_since = time.monotonic()  # since when the store has written with no fault

    @property
    def conn(self) -> Connection:
        """The connection, once the inserts and updates held back are written (any statement comes after them)."""
        assert self._conn is not None, "the store is not started"
        if self._held_inserts:
            self._write_held_inserts(self._conn)
        if self._held_updates:
            self._write_held_updates(self._conn)
        return self._conn

    def on_start(self) -> None:
        self._conn = self._engine.connect_writer()
        if self._retention_s:
            self.actor_ref.tell(Prune())
        if self._dialect.name == "postgresql" and (self._folds_counts or self._instance is not None):
            self.actor_ref.tell(Tick())

    def on_stop(self) -> None:
        for timer in (self._retry_timer, self._prune_timer, self._tick_timer):
            if timer is not None:
                timer.cancel()
        try:
            self._commit()
        except self._dialect.transient_errors as e:
            self._abort(e, Flush())
        if self._instance is not None:  # this instance is gone (see the sweep)
            with contextlib.suppress(*self._dialect.errors):  # (else it is forgotten once not seen for a while)
                self.conn.execute("DELETE FROM instances WHERE id = ?", (self._instance.id,))
        if self._unsaved:
            logger.error("stopping with %d status updates unsaved; those tasks run again", len(self._unsaved))
        for pending in list(self._bulk.values()):
            self._end_bulk(pending, "the service stopped")
        self.conn.close()

    def on_failure(self, *exc_info: Any) -> None:
        logger.critical("the store stopped: %s: %s", type(exc_info[1]).__name__, exc_info[1])
        self._refuse(self._inserted + [submit for submit, _ in self._replayed], "the store stopped; not stored")
        self._inserted, self._replayed = [], []
        for pending in list(self._bulk.values()):
            self._end_bulk(pending, "the store stopped")
        for timer in (self._retry_timer, self._prune_timer, self._tick_timer):
            if timer is not None:
                timer.cancel()
        if self._conn is not None:
            self._conn.close()

    def on_receive(self, message: Any) -> Any:
        try:
            return self._handle(message)
        except self._dialect.transient_errors as e:  # busy, read-only, disk full, I/O error, connection lost
            self._abort(e, message)
            return None

    def _handle(self, message: Any) -> Any:
        match message:
            case InsertTask():
                self._insert(message)
            case MarkRunning() | CompleteTask() | RetryTask() | FailTask():
                for sql, params in _status_update(message):
                    self._update(sql, params)
            case (
                CancelQueued()
                | CancelRunning()
                | RetryFinished()
                | DeleteTask()
                | RetryMatching()
                | CancelQueuedMatching()
                | SavePaused()
            ):
                self._control(message)
            case RequeueUnfinished(max_attempts, reply_to):
                self._requeue_unfinished(max_attempts)
                _reply(reply_to, Recovered(self._count_unfinished()))
            case FetchReady(limit, reply_to):
                self._commit()
                _reply(reply_to, self._fetch_ready(limit))
            case LeaseDue() | MarkPublished() | ClaimTasks() | Started() | Settle():
                self._distributed(message)
            case Flush() | RetryWrites() | Prune() | FileMoved() | Tick():
                self._note_to_self(message)
            case Inspect():
                return self._state()
            case _:
                raise TypeError(f"unexpected message {message!r}")
        return None

    def _note_to_self(self, message: Flush | RetryWrites | Prune | FileMoved | Tick) -> None:
        match message:
            case Flush():
                if self._in_transaction:  # else a fault rolled it back; the retry timer takes over
                    self._commit()
            case RetryWrites():
                self._retry()
            case Prune():
                self._prune()
            case FileMoved():
                self._stop_for_moved_file()
            case Tick():
                self._tick()

    def _insert(self, message: InsertTask) -> None:
        task = message.task
        self._inserted.append(message)
        self._begin()  # before the claim: a wait here for another process's lock leaves the task unclaimed
        if not message.committed.claim():  # its submitter gave up waiting, and was told it is not stored
            self._inserted.pop()
            return
        if task.idempotency_key is not None and not self._take_key(message):
            self._inserted.pop()
            return
        # Held back and written with the others in one statement before the next one (or the commit): on
        # PostgreSQL, one round trip for them all instead of one each.
        self._held_inserts.append(message)

    def _write_held_inserts(self, conn: Connection) -> None:
        held, self._held_inserts = self._held_inserts, []
        rows = [(t.id, t.action, t.payload, t.created_at, _due_at(t), t.priority) for t in (m.task for m in held)]
        if conn.executemany(INSERT_TASK, rows).rowcount == len(rows):
            return
        # An id was taken (only that insert changed nothing; the transaction goes on): find whose.
        stored = {row[0]: row[1] for row in conn.execute(
            "SELECT id, created_at FROM tasks WHERE " + self._dialect.any_of("id"),  # noqa: S608 -- no input in it
            (self._dialect.list_of([row[0] for row in rows]),),
        )}  # fmt: skip
        for message in held:
            if stored.get(message.task.id) != message.task.created_at:
                logger.error("task %s not stored: its id is taken", message.task.id)
                self._inserted.remove(message)
                self._refuse([message], "the task was not stored")

    def _write_held_updates(self, conn: Connection) -> None:
        held, self._held_updates = self._held_updates, []
        for sql, group in itertools.groupby(held, key=lambda update: update[0]):  # in order, each run in one go
            conn.executemany(sql, [params for _, params in group])

    def _take_key(self, message: InsertTask) -> bool:
        """Record the task's idempotency key for it, unless the key was used within the window: then answer
        with the earlier task (once the transaction that holds it is committed), or refuse a different request
        under the same key, and return False.

        The key is taken by one statement that writes it only if it is new or expired, so of two instances
        taking one key at once, the second waits for the first's commit and finds the key used."""
        task = message.task
        now = epoch_now()
        window_start = now - self._idempotency_window_s
        if self._seen_before(message, window_start):
            return False
        taken = self.conn.execute(
            "INSERT INTO idempotency_keys (key, request_hash, task_id, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET request_hash = excluded.request_hash, task_id = excluded.task_id,"
            " created_at = excluded.created_at WHERE idempotency_keys.created_at < ?",
            (task.idempotency_key, task.request_hash, task.id, now, window_start),
        ).rowcount
        if not taken and self._seen_before(message, window_start):  # another instance took it just now
            return False
        self.conn.execute(  # forget a few expired keys each time, so the table keeps to the window
            "DELETE FROM idempotency_keys WHERE key IN"
            " (SELECT key FROM idempotency_keys WHERE created_at < ? LIMIT 10)",
            (window_start,),
        )
        return True

    def _seen_before(self, message: InsertTask, window_start: float) -> bool:
        """Whether the task's idempotency key was used since ``window_start``; if so, answer as :meth:`_take_key`
        says."""
        task = message.task
        earlier = self.conn.execute(
            "SELECT task_id, request_hash FROM idempotency_keys WHERE key = ? AND created_at >= ?",
            (task.idempotency_key, window_start),
        ).fetchone()
        if earlier is None:
            return False
        task_id, request_hash = earlier
        self._replayed.append((message, task_id if request_hash == task.request_hash else None))
        return True

    def _update(self, sql: str, params: tuple[Any, ...]) -> int:
        """Write a status update in the open transaction; return the number of rows it changed."""
        self._updates.append((sql, params))
        self._begin()
        return self.conn.execute(sql, params).rowcount

    def _hold(self, sql: str, params: tuple[Any, ...]) -> None:
        """A status update whose row count nobody needs: held back and written with the updates after it
        before the next other statement (or the commit), in one round trip for each run of the same SQL."""
        self._updates.append((sql, params))
        self._begin()
        self._held_updates.append((sql, params))

    def _distributed(self, message: LeaseDue | MarkPublished | ClaimTasks | Started | Settle) -> None:
        """The distributed mode's writes: the relay's leases, claims of deliveries, and their outcomes."""
        match message:
            case LeaseDue(limit, max_attempts, reply_to):
                _reply(reply_to, self._lease_due(limit, max_attempts))
            case MarkPublished(task_ids, lease):
                self._hold(pg_sql.MARK_PUBLISHED, (epoch_now(), self._dialect.list_of(task_ids), lease))
            case ClaimTasks(deliveries, max_attempts, reply_to):
                self._claim(deliveries, max_attempts, reply_to)
            case Started(task_id, attempt, started_at):
                self._hold(STARTED, (started_at, task_id, attempt, self._me))
            case Settle(update, attempt, receipt, reply_to):
                self._settle(update, attempt)
                self._settling.append((reply_to, receipt))

    def _settle(self, update: CompleteTask | RetryTask | FailTask | CancelRunning | ReleaseClaim, attempt: int) -> None:
        """Write how a delivered task's attempt ended, only if that attempt is still the task's latest and
        running (an attempt taken over by another instance, or already ended, changes nothing)."""
        if isinstance(update, ReleaseClaim):
            self._hold(RELEASE_CLAIM, (update.task_id, attempt, self._me))
            self._hold(pg_sql.CANCEL_IF_ASKED, (CANCELLED_ELSEWHERE, utc_now(), update.task_id, attempt - 1, self._me))
            return
        if isinstance(update, CancelRunning):
            cancelled = self._update(
                CANCEL_LATEST, (update.error, update.processed_at, update.task_id, attempt, self._me)
            )
            for answer in update.answers:
                self._answer(update.task_id, answer, "cancelled" if cancelled else None)
            return
        (sql, params), *errors = _status_update(update)
        for _, error in errors:  # first, while the update's condition still holds
            self._hold(RECORD_LATEST_ERROR, (*error, update.task_id, attempt, self._me))
        self._hold(sql + LATEST_ATTEMPT, (*params, attempt, self._me))
        if isinstance(update, RetryTask):
            self._hold(pg_sql.CANCEL_IF_ASKED, (CANCELLED_ELSEWHERE, utc_now(), update.task_id, attempt, self._me))

    def _lease_due(self, limit: int, max_attempts: int) -> Leased:
        """Lease (and commit) up to ``limit`` tasks due to publish, for the relay; with news of the cluster.
        On the way, now and then, the sweep looks for what other instances left."""
        assert self._instance is not None, "the distributed mode's store knows its instance"
        instance, now = self._instance, epoch_now()
        lease = now + LEASE_S
        self._begin()
        # Only a store that has written with no fault for a while sweeps: after an outage of PostgreSQL, every
        # instance's heartbeat is old, and the live ones must have written theirs again before any takes over.
        faultless_s = time.monotonic() - self._faultless_since
        if now - self._swept_at >= SWEEP_EVERY_S and faultless_s >= INSTANCE_LOST_AFTER_S:
            self._swept_at = now
            self._sweep(now, max_attempts)
        paused = self.conn.execute("SELECT value FROM queue_settings WHERE name = 'paused'").fetchone()
        paused_now = paused is not None and paused[0] == "true"
        # (Paused since the relay asked, by any instance: nothing is published, so priorities hold after a resume.)
        leasing = limit > 0 and not paused_now
        rows = self.conn.execute(pg_sql.LEASE_DUE, (lease, now, limit)).fetchall() if leasing else []
        next_due_at = self.conn.execute(pg_sql.NEXT_TO_PUBLISH, (now,)).fetchone()[0]
        cancel_asked = tuple(row[0] for row in self.conn.execute(pg_sql.CANCEL_ASKED, (instance.id,)).fetchall())
        unfinished = None  # (summing the counts is the costly part of a lease: once a second is enough)
        if now - self._counted_at >= COUNT_EVERY_S:
            self._counted_at, unfinished = now, self._count_unfinished()
        self._commit()
        task_ids = tuple(task_id for task_id, _, _ in sorted(rows, key=lambda row: (-row[1], row[2])))
        return Leased(task_ids, lease, next_due_at, unfinished, paused_now, cancel_asked)

    def _sweep(self, now: float, max_attempts: int) -> None:
        """Tasks other instances left behind: published long ago and never delivered (RabbitMQ lost the message)
        are published again; running on an instance not seen for ``INSTANCE_LOST_AFTER_S`` (it died, and its
        messages were lost too, else another instance would have taken them over long before) end that attempt
        as interrupted and are queued again (or fail, out of attempts; or end cancelled, if that was asked)."""
        lost = self.conn.execute(pg_sql.REPUBLISH_LOST, (now, now - LOST_AFTER_S)).rowcount
        if lost:
            logger.warning("%d tasks published over %g s ago were never delivered: publishing them again",
                           lost, LOST_AFTER_S)  # fmt: skip
        at = utc_now()
        orphans = self.conn.execute(pg_sql.ORPHANED, (now - INSTANCE_LOST_AFTER_S,)).fetchall()
        for task_id, attempts, cancel_asked, started in orphans:
            if self._take_over(
                task_id, attempts, started=started, cancel_asked=cancel_asked, max_attempts=max_attempts, at=at
            ):
                self.conn.execute("UPDATE tasks SET status = 'queued', started_at = NULL WHERE id = ?", (task_id,))
        if orphans:
            logger.warning("%d tasks were left running by instances not seen for %g s: their attempts end interrupted",
                           len(orphans), INSTANCE_LOST_AFTER_S)  # fmt: skip
        self.conn.execute(pg_sql.FORGET_INSTANCES, (now - INSTANCE_LOST_AFTER_S,))

    def _take_over(
        self, task_id: str, attempts: int, *, started: bool, cancel_asked: bool, max_attempts: int, at: str
    ) -> bool:
        """A task left running by an instance that is gone: its attempt is recorded as interrupted (one claimed
        ahead and not started yet counts too: it may have started moments before, and its start not be written
        yet). Then it ends cancelled, if that was asked, or failed, out of attempts. Whether it may run again."""
        self.conn.execute(RECORD_ERROR, (task_id, attempts, LOST_ATTEMPT if started else LOST_CLAIM, at))
        if not cancel_asked and attempts < max_attempts:
            return True
        status = "cancelled" if cancel_asked else "failed"
        error = CANCELLED_ELSEWHERE if cancel_asked else f"interrupted on each of its {attempts} attempts"
        sql = "UPDATE tasks SET status = ?, error = ?, processed_at = ? WHERE id = ?"
        self.conn.execute(sql, (status, error, at, task_id))
        return False

    def _claim(self, deliveries: tuple[Delivered, ...], max_attempts: int, reply_to: pykka.ActorRef[Any]) -> None:
        """Start the deliveries' tasks that are still to run; answer once committed (as Claimed). One statement
        locks and reads them all, one claims them all; the rare cases below take one statement each."""
        self._begin()
        now, now_at = epoch_now(), utc_now()
        task_ids = self._dialect.list_of(sorted({delivery.task_id for delivery in deliveries}))
        found = {row[0]: row[1:] for row in self.conn.execute(pg_sql.CLAIM_LOCK, (task_ids,)).fetchall()}
        to_claim: dict[str, Delivered] = {}  # by task id, in the order they came
        claimed: dict[str, tuple[QueuedTask, Receipt]] = {}  # the claimed tasks, by id
        skipped: list[Receipt] = []
        for delivery in sorted(deliveries, key=lambda d: not d.redelivered):  # (one redelivered takes over first)
            task_id = delivery.task_id
            status, attempts, available_at, claimed_lease, cancel_asked, started = found.pop(
                task_id, (None, 0, 0.0, None, False, False)
            )
            # This very message came back from an instance that died (or lost RabbitMQ) while the task ran:
            lost_attempt = status == "running" and delivery.redelivered and claimed_lease == delivery.lease
            if lost_attempt:
                lost_attempt = self._take_over(
                    task_id, attempts, started=started, cancel_asked=cancel_asked, max_attempts=max_attempts, at=now_at
                )
            # Claimed by this very delivery before, in a commit whose outcome was unknown (the connection was lost):
            if status == "running" and claimed_lease == delivery.lease and not delivery.redelivered:
                row = self.conn.execute(pg_sql.CLAIMED, (task_id,)).fetchone()
                claimed[task_id] = (QueuedTask(task_id, *row), delivery.receipt)
            elif (status == "queued" and available_at <= now) or lost_attempt:
                to_claim[task_id] = delivery
            else:  # (a second delivery of a task in this batch finds nothing left: found.pop)
                if status == "queued":  # not due yet by this clock (another's runs ahead): published again when due
                    self.conn.execute(pg_sql.PUBLISH_WHEN_DUE, (task_id,))
                skipped.append(delivery.receipt)
        if to_claim:
            leases = [delivery.lease for delivery in to_claim.values()]
            claims = self.conn.execute(pg_sql.CLAIM, (self._me, list(to_claim), leases)).fetchall()
            for task_id, *row in claims:
                claimed[task_id] = (QueuedTask(task_id, *row), to_claim[task_id].receipt)
        order = {delivery.receipt: n for n, delivery in enumerate(deliveries)}
        in_order = tuple(sorted(claimed.values(), key=lambda task: order[task[1]]))
        self._answers.append((None, None, (reply_to, Claimed(in_order, tuple(skipped)))))

    def _tick(self) -> None:
        """(PostgreSQL) Fold the count changes into their totals (the store that folds them) and record that its
        instance is alive (the store that has one); then again after a while."""
        try:
            self._begin()
            if self._folds_counts:
                self.conn.execute(pg_sql.FOLD_COUNTS)
            if (instance := self._instance) is not None:
                self.conn.execute(
                    pg_sql.SEEN, (instance.id, instance.host, instance.pid, instance.started_at, epoch_now())
                )
            self._commit()
        finally:
            self._tick_timer = tell_later(self.actor_ref, Tick(), TICK_EVERY_S)

    def _control(self, message: ControlRequest) -> None:
        match message:
            case SavePaused(paused, answer):
                self._begin()
                self.conn.execute(
                    "INSERT INTO queue_settings (name, value) VALUES ('paused', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    ("true" if paused else "false",),
                )
                self._answers.append((answer, paused, None))
            case RetryMatching() | CancelQueuedMatching():
                self._control_matching(message)
            case CancelQueued():
                self._cancel_queued(message)
            case CancelRunning():
                self._cancel_running(message)
            case RetryFinished():
                self._retry_finished(message)
            case DeleteTask():
                self._delete(message)

    def _cancel_queued(self, message: CancelQueued) -> None:
        """Cancel a queued task. (Distributed mode) A task running on another instance is marked for it to
        cancel: the answer is then ``running``, done, and the asker waits for it to end."""
        if self._dialect.name == "postgresql":  # (in one statement: it may go from running to queued meanwhile)
            self._begin()
            found = self.conn.execute(pg_sql.CANCEL_OR_ASK, (utc_now(), message.task_id)).fetchone()
            cancelled, asked = found == ("cancelled",), found == ("running",)
        else:
            cancelled = self._control_write(
                "UPDATE tasks SET status = 'cancelled', processed_at = ? WHERE id = ? AND status = 'queued'",
                (utc_now(), message.task_id),
            )
            asked = False
        then = (message.reply_to, TaskCancelled(message.task_id, cancelled))
        self._answer(message.task_id, message.answer, "cancelled" if cancelled else "running" if asked else None, then)

    def _cancel_running(self, message: CancelRunning) -> None:
        self._update(  # a status update: kept and written again after a fault, as a failure would be
            "UPDATE tasks SET status = 'cancelled', error = ?, processed_at = ? WHERE id = ?",
            (message.error, message.processed_at, message.task_id),
        )
        for answer in message.answers:
            self._answer(message.task_id, answer, "cancelled")

    def _retry_finished(self, message: RetryFinished) -> None:
        queued = self._control_write(
            "UPDATE tasks SET status = 'queued', attempts = 0, result = NULL, error = NULL, started_at = NULL,"
            " processed_at = NULL, available_at = ? WHERE id = ? AND status IN ('failed', 'cancelled')",
            (epoch_now(), message.task_id),
        )
        then = None
        if queued:
            row = self.conn.execute(
                "SELECT action, payload, attempts, priority, available_at FROM tasks WHERE id = ?", (message.task_id,)
            ).fetchone()
            then = (message.reply_to, TasksStored((QueuedTask(message.task_id, *row),)))
        self._answer(message.task_id, message.answer, "queued" if queued else None, then)

    def _delete(self, message: DeleteTask) -> None:
        deleted = self._control_write(
            "DELETE FROM tasks WHERE id = ? AND status IN ('completed', 'failed', 'cancelled')", (message.task_id,)
        )
        if deleted:
            self.conn.execute("DELETE FROM task_errors WHERE task_id = ?", (message.task_id,))
        self._answer(message.task_id, message.answer, "deleted" if deleted else None)

    def _control_matching(self, message: RetryMatching | CancelQueuedMatching) -> None:
        """A control request on every task a filter matches, ``BULK_BATCH`` tasks at a time.

        Each batch is committed at once, and the next is a message the store sends itself, behind
        the writes waiting now, so submits and status updates go on meanwhile. The request is
        answered after the last batch. A fault on the way ends it (``_abort``): the batches done
        before it stay done, the answer says how many, and asking again does the rest."""
        progress = message.progress
        if progress is None:
            (upto,) = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()
            statuses = message.filters.statuses
            if isinstance(message, CancelQueuedMatching):  # running tasks are the queue's to interrupt
                statuses = tuple(status for status in statuses if status == "queued")
            progress = BulkProgress(upto, utc_now(), statuses, None, 0)
        self._bulk.pop(id(message.answer), None)
        if progress.statuses:
            next_step = replace(message, progress=self._bulk_batch(message, progress))
            self._bulk[id(message.answer)] = next_step
            self.actor_ref.tell(next_step)
        elif isinstance(message, RetryMatching):
            message.answer.set(progress.done)
        else:
            running: tuple[str, ...] = ()
            if "running" in message.filters.statuses:
                running_filter = replace(message.filters, statuses=("running",))
                if self._dialect.name == "sqlite":
                    sql, params = running_filter.applied_to("SELECT id FROM tasks", dialect=self._dialect)
                else:  # (distributed mode) the instances running them are asked to cancel them, as one is
                    self._begin()
                    sql, params = running_filter.applied_to(ASK_TO_CANCEL, dialect=self._dialect)
                    sql += " RETURNING id"
                running = tuple(task_id for (task_id,) in self.conn.execute(sql, params))
                if self._dialect.name == "postgresql":
                    self._commit()
            if not _reply(message.reply_to, MatchingCancelled(progress.done, running, message.answer, written=True)):
                message.answer.set(progress.done)  # the queue has stopped: nothing to interrupt, and no one to answer

    def _bulk_batch(self, message: RetryMatching | CancelQueuedMatching, progress: BulkProgress) -> BulkProgress:
        """Change and commit the next batch of tasks in the first of the statuses left; the progress after it."""
        where, params = replace(message.filters, statuses=progress.statuses[:1]).where(self._dialect)
        where += ["seq <= ?", "created_at <= ?"]
        params += [progress.upto_seq, progress.upto_created_at]
        if progress.after is not None:
            where.append("(created_at, seq) > (?, ?)")
            params.extend(progress.after)
        sql = "SELECT seq, created_at, priority FROM tasks"
        sql += " WHERE " + " AND ".join(where) + " ORDER BY created_at, seq LIMIT ?"
        self._begin()
        batch = self.conn.execute(sql, (*params, BULK_BATCH)).fetchall()
        seqs = self._dialect.list_of([seq for seq, _, _ in batch])
        status = progress.statuses[0]
        if isinstance(message, RetryMatching):
            changed = self.conn.execute(
                RETRY_BATCH + self._dialect.any_of("seq") + IN_STATUS, (epoch_now(), seqs, status)
            ).rowcount
            if changed:
                requeued = Requeued(changed, max(priority for _, _, priority in batch))
                self._answers.append((None, None, (message.reply_to, requeued)))
        else:
            changed = self.conn.execute(
                CANCEL_BATCH + self._dialect.any_of("seq") + IN_STATUS, (utc_now(), seqs, status)
            ).rowcount
        self._commit()  # if it fails, _abort answers with the batches done before this one
        if len(batch) == BULK_BATCH:
            return replace(progress, after=(batch[-1][1], batch[-1][0]), done=progress.done + changed)
        return replace(progress, statuses=progress.statuses[1:], after=None, done=progress.done + changed)

    def _end_bulk(self, message: RetryMatching | CancelQueuedMatching, why: str) -> None:
        """A bulk request cannot go on: tell its asker (and the queue, for a cancel) how far it got."""
        self._bulk.pop(id(message.answer), None)
        done = 0 if message.progress is None else message.progress.done
        error = StoreError(f"{why}; {done} tasks were changed before, ask again for the rest")
        message.answer.set_exception((StoreError, error, None))
        if isinstance(message, CancelQueuedMatching):
            _reply(message.reply_to, MatchingCancelled(done, (), message.answer, written=False))

    def _control_write(self, sql: str, params: tuple[Any, ...]) -> bool:
        """Write a control request in the open transaction; whether it changed a row.

        Unlike status updates, it is not kept to write again after a fault: its asker is told
        the store cannot write, and may ask again."""
        self._begin()
        return self.conn.execute(sql, params).rowcount > 0

    def _answer(
        self,
        task_id: str,
        answer: pykka.Future[ControlResult],
        done_status: str | None,
        then: tuple[pykka.ActorRef[Any], Any] | None = None,
    ) -> None:
        """Answer once the transaction is committed: ``done_status`` if the request was done, else the task's
        status as it is (None: no such task). ``then`` is a message to send along with the answer."""
        if done_status is not None:
            result = ControlResult(done_status, done=True)
        else:
            found = self.conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            result = ControlResult(None if found is None else found[0], done=False)
        self._answers.append((answer, result, then))

    def _prune(self) -> None:
        """Delete a batch of finished tasks older than the retention, with their errors. The next batch
        comes after the messages waiting now, so writes go on meanwhile; once none is left, after a while."""
        full = False
        try:
            cutoff = utc_from_epoch(epoch_now() - self._retention_s)
            self._begin()
            deleted = [
                task_id
                for (task_id,) in self.conn.execute(
                    "DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE status IN"
                    " ('completed', 'failed', 'cancelled') AND created_at < ? AND processed_at < ? LIMIT ?)"
                    " RETURNING id",
                    (cutoff, cutoff, PRUNE_BATCH),
                )
            ]
            self.conn.execute(
                "DELETE FROM task_errors WHERE " + self._dialect.any_of("task_id"),  # noqa: S608 -- no input in it
                (self._dialect.list_of(deleted),),
            )
            self._pruned += len(deleted)
            full = len(deleted) == PRUNE_BATCH
        finally:
            if full:
                self.actor_ref.tell(Prune())
            else:
                if self._pruned:
                    logger.info(
                        "deleted %d finished tasks older than %g s (store.retention_s)", self._pruned, self._retention_s
                    )
                self._pruned = 0
                self._prune_timer = tell_later(self.actor_ref, Prune(), min(PRUNE_EVERY_S, self._retention_s / 2))

    def _moved(self) -> bool:
        """Whether the file at the database's path is no longer the file this store writes."""
        return self._engine.moved()

    def _stop_for_moved_file(self) -> None:
        raise DatabaseMoved(
            f"the database file {self._engine.where} was deleted or replaced while in use; its last writes went to"
            " the file that was there before, and the service stops (a restart opens the file now at the path)"
        )

    def _state(self) -> StoreState:
        if self._moved():  # found between writes: stop, as after a commit
            self.actor_ref.tell(FileMoved())
            return StoreState("the database file was deleted or replaced", len(self._unsaved), 0)
        fault = self._fault
        if fault is None:
            return StoreState(fault=None, unsaved_updates=len(self._unsaved), failed_writes=0)
        return StoreState(f"the store cannot write: {fault.error}", len(self._unsaved), fault.all_failures)

    def _retry(self) -> None:
        """The fault's timer: write again, even with no updates to retry, to find out whether it cleared."""
        self._retry_timer = None
        if not self._in_transaction:  # a write since the fault may have begun one already
            self._begin()
            self.conn.execute(PROBE)
        self._commit()

    def _begin(self) -> None:
        """Open a transaction if none is open, first writing again what a fault rolled back."""
        if self._in_transaction:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        self.actor_ref.tell(Flush())
        unsaved, self._unsaved = self._unsaved, []
        self._updates[:0] = unsaved
        self._settling[:0] = self._unsettled
        self._unsettled = []
        for sql, params in unsaved:
            self.conn.execute(sql, params)

    def _commit(self) -> None:
        if not self._in_transaction:
            if not self._unsaved:
                return
            self._begin()
        try:
            self.conn.execute("COMMIT")  # if this fails, _abort refuses the inserts and keeps the updates
        except self._dialect.transient_errors:
            # A server's connection lost during the commit: the server may have committed, or not.
            self._commit_unknown = getattr(self.conn, "broken", False)
            raise
        inserted, self._inserted = self._inserted, []
        updates = len(self._updates)
        self._updates.clear()
        self._in_transaction = False
        if self._metrics is not None:
            self._metrics.commit_batch.observe(len(inserted) + len(self._replayed) + updates + len(self._answers))
        if self._moved():
            answered_with_earlier = [submit for submit, _ in self._replayed]
            self._replayed = []
            self._refuse(
                inserted + answered_with_earlier, "the database file was deleted or replaced; the task was not stored"
            )
            self._stop_for_moved_file()
        if self._fault is not None:
            self._cleared(updates)
        self._tell_stored(inserted)
        if self._settling:
            self._settled()
        for message in inserted:
            message.committed.set(None)
        replayed, self._replayed = self._replayed, []
        for submit, earlier_id in replayed:
            if earlier_id is None:
                conflict = IdempotencyConflict("the key was used for another request")
                submit.committed.set_exception((IdempotencyConflict, conflict, None))
            else:
                submit.committed.set(earlier_id)
        self._give_answers()

    @staticmethod
    def _tell_stored(inserted: list[InsertTask]) -> None:
        """After a commit: the queue hears of the new tasks before their submitters do, so once a 202 is out
        the queue already holds the news of that task."""
        stored_by_queue: defaultdict[pykka.ActorRef[Any], list[QueuedTask]] = defaultdict(list)
        for message in inserted:
            task = message.task
            stored = QueuedTask(task.id, task.action, task.payload, 0, task.priority, task.run_at or 0.0)
            stored_by_queue[message.reply_to].append(stored)
        for queue, tasks in stored_by_queue.items():
            _reply(queue, TasksStored(tuple(tasks)))

    def _settled(self) -> None:
        """After a commit: the deliveries whose outcomes it wrote can be acked."""
        receipts: defaultdict[pykka.ActorRef[Any], list[Receipt]] = defaultdict(list)
        for queue, receipt in self._settling:
            receipts[queue].append(receipt)
        self._settling = []
        for queue, theirs in receipts.items():
            _reply(queue, Settled(tuple(theirs)))

    def _give_answers(self) -> None:
        """After a commit: answer the control requests it wrote."""
        answers, self._answers = self._answers, []
        for answer, result, then in answers:
            if answer is not None:
                answer.set(result)
            if then is not None and not _reply(*then) and isinstance(then[1], Claimed):
                self._release(then[1])

    def _release(self, claimed: Claimed) -> None:
        """Claimed tasks whose queue stopped before it heard of them (so none of them started) are queued
        again, as if never claimed; RabbitMQ delivers their messages again, here or elsewhere."""
        for task, _ in claimed.tasks:
            self._update(RELEASE_CLAIM, (task.id, task.attempts + 1, self._me))
            self._update(pg_sql.CANCEL_IF_ASKED, (CANCELLED_ELSEWHERE, utc_now(), task.id, task.attempts, self._me))

    def _abort(self, error: Exception, message: Any) -> None:
        """Roll back: refuse the transaction's inserts, keep its updates to write again later."""
        self._held_inserts = []  # (they are among the inserts refused below)
        self._held_updates = []  # (they are among the updates kept below)
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self._in_transaction = False
        inserted, self._inserted = self._inserted, []
        self._unsaved += self._updates  # oldest first: _begin puts earlier unsaved ones in front
        self._updates = []
        self._unsettled += self._settling  # acked once those updates are written
        self._settling = []
        if self._commit_unknown:
            self._commit_unknown = False
            unknown = "the connection to the database was lost during the commit: the task may be stored or not;"
            self._refuse(inserted, unknown + " look it up before submitting it again", CommitUnknown)
        else:
            self._refuse(inserted, "the store cannot write now; try again")
        self._refuse([submit for submit, _ in self._replayed], "the store cannot write now; try again")
        self._replayed = []
        cannot_write = (StoreError, StoreError("the store cannot write now; try again"), None)
        answers, self._answers = self._answers, []
        for answer, _, then in answers:
            if answer is not None:
                answer.set_exception(cannot_write)
            if then is not None:
                self._not_written(*then)
        fault = self._note_fault(str(error), len(inserted))
        self._failed(message, cannot_write, fault.retry_s)
        if self._retry_timer is None:
            self._retry_timer = tell_later(self.actor_ref, RetryWrites(), fault.retry_s)
            fault.retry_s = min(RETRY_MAX_S, fault.retry_s * 2)

    def _failed(self, message: Any, cannot_write: Any, retry_s: float) -> None:
        """Tell whoever waits on ``message``, which a fault interrupted, that it was not done."""
        if isinstance(message, CancelQueued | RetryFinished | DeleteTask | SavePaused):  # failed before its answer
            message.answer.set_exception(cannot_write)
        if isinstance(message, CancelRunning):  # its update is kept and written later; its askers hear now
            for answer in message.answers:
                answer.set_exception(cannot_write)
        if isinstance(message, CancelQueued):
            _reply(message.reply_to, TaskCancelled(message.task_id, cancelled=False))
        if isinstance(message, RetryMatching | CancelQueuedMatching):
            self._end_bulk(message, "the store cannot write now")
        if isinstance(message, ClaimTasks):  # the queue claims them again later
            _reply(message.reply_to, Claimed((), (), tuple(delivery.receipt for delivery in message.deliveries)))
        if isinstance(message, FetchReady):  # nothing fetched: the queue asks again after the backoff
            _reply(message.reply_to, ReadyTasks((), next_due_at=epoch_now() + retry_s))
        if isinstance(message, LeaseDue):  # nothing leased: the relay tries again after the backoff
            _reply(message.reply_to, Leased((), 0.0, epoch_now() + retry_s, None, None))

    @staticmethod
    def _not_written(to: pykka.ActorRef[Any], news: Any) -> None:
        """Tell the queue, if it waits to hear how a control request ended, that it was not written."""
        if isinstance(news, TaskCancelled):
            _reply(to, TaskCancelled(news.task_id, cancelled=False))
        if isinstance(news, Claimed):  # the queue claims them again later
            _reply(to, Claimed((), (), tuple(receipt for _, receipt in news.tasks) + news.skipped))

    def _note_fault(self, error: str, refused: int) -> Fault:
        """Log a fault when it starts, then at most every SUMMARY_S while it lasts."""
        now = time.monotonic()
        fault = self._fault
        self._faultless_since = math.inf  # (until the fault clears)
        if fault is None:
            fault = self._fault = Fault(error, since=now, refused=refused, logged_at=now)
            logger.error(
                "the store cannot write: %s; new tasks are refused (503) and %d status updates are kept"
                " to write again, retrying every %g to %g s until it clears",
                error,
                len(self._unsaved),
                RETRY_S,
                RETRY_MAX_S,
            )
            return fault
        fault.failures += 1
        fault.all_failures += 1
        fault.refused += refused
        if now - fault.logged_at >= SUMMARY_S:
            logger.warning(
                "the store still cannot write after %.0f s: %s; %d failed writes and %d refused tasks"
                " in the last %.0f s, %d status updates waiting",
                now - fault.since,
                error,
                fault.failures,
                fault.refused,
                now - fault.logged_at,
                len(self._unsaved),
            )
            fault.failures = fault.refused = 0
            fault.logged_at = now
        return fault

    def _cleared(self, updates: int) -> None:
        fault, self._fault = self._fault, None
        assert fault is not None
        self._faultless_since = time.monotonic()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        logger.warning(
            "the store writes again, after %.1f s of: %s; %d status updates written",
            time.monotonic() - fault.since,
            fault.error,
            updates,
        )

    @staticmethod
    def _refuse(inserts: list[InsertTask], reason: str, error: type[StoreError] = StoreError) -> None:
        for insert in inserts:
            insert.committed.set_exception((error, error(reason), None))

    def _requeue_unfinished(self, max_attempts: int) -> None:
        now = utc_now()
        self._update(
            "INSERT INTO task_errors (task_id, attempt, error, failed_at)"
            " SELECT id, attempts, CASE WHEN attempts >= ?"
            " THEN 'interrupted on each of its ' || attempts || ' attempts'"
            " ELSE 'interrupted: the service stopped while it ran' END, ? FROM tasks WHERE status = 'running'",
            (max_attempts, now),
        )
        failed = self._update(
            "UPDATE tasks SET status = 'failed', processed_at = ?,"
            " error = 'interrupted on each of its ' || attempts || ' attempts'"
            " WHERE status = 'running' AND attempts >= ?",
            (now, max_attempts),
        )
        requeued = self._update(
            # Their due time stays as it was: they run in their turn, before tasks submitted since.
            "UPDATE tasks SET status = 'queued' WHERE status = 'running'",
            (),
        )
        self._commit()
        if failed or requeued:
            logger.warning("recovered tasks left running by a previous run: %d re-queued, %d failed", requeued, failed)

    def _count_unfinished(self) -> int:
        (count,) = self.conn.execute(
            "SELECT COALESCE(SUM(n), 0) FROM task_counts WHERE status IN ('queued', 'running')"
        ).fetchone()
        return int(count)  # (PostgreSQL sums to a decimal)

    def _fetch_ready(self, limit: int) -> ReadyTasks:
        """The first ``limit`` tasks due now, in the order they run, and when the next delayed one is due.

        One priority at a time, each a range of the priority index (priority, then due time), so
        tasks that are not due yet are skipped by a seek, not read one by one; past
        ``MAX_PRIORITY_SEEKS`` priorities, the rest is read in one scan."""
        now = epoch_now()
        rows: list[Any] = []
        priority = self.conn.execute(
            "SELECT MAX(priority) FROM tasks INDEXED BY tasks_by_priority WHERE status = 'queued'"
        ).fetchone()[0]
        for _ in range(MAX_PRIORITY_SEEKS):
            if priority is None or len(rows) >= limit:
                break
            rows += self.conn.execute(
                FETCH_READY + " AND priority = ? ORDER BY available_at, seq LIMIT ?", (now, priority, limit - len(rows))
            ).fetchall()
            priority = self.conn.execute(
                "SELECT MAX(priority) FROM tasks INDEXED BY tasks_by_priority WHERE status = 'queued' AND priority < ?",
                (priority,),
            ).fetchone()[0]
        else:
            if priority is not None and len(rows) < limit:
                rows += self.conn.execute(
                    FETCH_READY + " AND priority <= ? ORDER BY priority DESC, available_at, seq LIMIT ?",
                    (now, priority, limit - len(rows)),
                ).fetchall()
        next_due_at = self.conn.execute(
            "SELECT MIN(available_at) FROM tasks INDEXED BY tasks_ready WHERE status = 'queued' AND available_at > ?",
            (now,),
        ).fetchone()[0]
        return ReadyTasks(tuple(QueuedTask(*row) for row in rows), next_due_at)


INSERT_TASK = (
    "INSERT INTO tasks (id, action, payload, status, attempts, created_at, available_at, priority)"
    " VALUES (?, ?, ?, 'queued', 0, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
RETRY_BATCH = (
    "UPDATE tasks SET status = 'queued', attempts = 0, result = NULL, error = NULL, started_at = NULL,"
    " processed_at = NULL, available_at = ? WHERE "
)
CANCEL_BATCH = "UPDATE tasks SET status = 'cancelled', processed_at = ? WHERE "
IN_STATUS = " AND status = ?"  # checked again on each row: on PostgreSQL, another instance may have changed it
FETCH_READY = (
    "SELECT id, action, payload, attempts, priority, available_at FROM tasks INDEXED BY tasks_by_priority"
    " WHERE status = 'queued' AND available_at <= ?"
)
LEASE_S = 15.0  # how long the relay of one instance has to publish the tasks it leased, before another may
LOST_AFTER_S = 600.0  # a task published this long ago and never claimed lost its message: published again
SWEEP_EVERY_S = 60.0  # how often a store looks for them, and for tasks left running (in a relay's lease)
# An instance not seen for this long is gone: what it left running is taken over (by the sweep of a store that has
# written with no fault for as long). Twice RabbitMQ's heartbeat, by which it delivers a dead instance's messages again.
INSTANCE_LOST_AFTER_S = 120.0
COUNT_EVERY_S = 1.0  # how often a relay's lease counts the unfinished tasks, for the queue's max_backlog
TICK_EVERY_S = 1.0  # how often the store folds the count changes and records that its instance is alive (PostgreSQL)
# (Distributed mode) "... AND status = 'running' AND attempts = ? AND claimed_by IS NOT DISTINCT FROM ?": the
# attempt (its number, and the instance that claimed it) is still the task's latest.
LATEST_ATTEMPT = " AND status = 'running' AND attempts = ? AND claimed_by IS NOT DISTINCT FROM ?"
RECORD_LATEST_ERROR = (
    "INSERT INTO task_errors (task_id, attempt, error, failed_at) SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1"
    " FROM tasks WHERE id = ? AND status = 'running' AND attempts = ? AND claimed_by IS NOT DISTINCT FROM ?)"
)
STARTED = (
    "UPDATE tasks SET started_at = ? WHERE id = ?"
    " AND status = 'running' AND attempts = ? AND claimed_by IS NOT DISTINCT FROM ?"
)
CANCEL_LATEST = (
    "UPDATE tasks SET status = 'cancelled', error = ?, processed_at = ? WHERE id = ?"
    " AND status = 'running' AND attempts = ? AND claimed_by IS NOT DISTINCT FROM ?"
)
RELEASE_CLAIM = (
    "UPDATE tasks SET status = 'queued', attempts = attempts - 1, started_at = NULL WHERE id = ?"
    " AND status = 'running' AND attempts = ? AND claimed_by IS NOT DISTINCT FROM ?"
)
ASK_TO_CANCEL = "UPDATE tasks SET cancel_asked = true"
LOST_ATTEMPT = "interrupted: the instance running it stopped"
LOST_CLAIM = "interrupted: the instance that had claimed it stopped (before it started there, or just after)"
CANCELLED_ELSEWHERE = "cancelled (asked of another instance)"
RECORD_ERROR = "INSERT INTO task_errors (task_id, attempt, error, failed_at) VALUES (?, ?, ?, ?)"


def _status_update(message: MarkRunning | CompleteTask | RetryTask | FailTask) -> list[Update]:
    match message:
        case MarkRunning(task_id, started_at):
            sql = "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ? WHERE id = ?"
            return [(sql, (started_at, task_id))]
        case CompleteTask(task_id, result, processed_at):
            sql = "UPDATE tasks SET status = 'completed', result = ?, error = NULL, processed_at = ? WHERE id = ?"
            return [(sql, (result, processed_at, task_id))]
        case RetryTask(task_id, attempt, error, available_at, failed_at):
            sql = "UPDATE tasks SET status = 'queued', error = ?, available_at = ? WHERE id = ?"
            return [(sql, (error, available_at, task_id)), (RECORD_ERROR, (task_id, attempt, error, failed_at))]
        case FailTask(task_id, attempt, error, processed_at):
            sql = "UPDATE tasks SET status = 'failed', error = ?, processed_at = ? WHERE id = ?"
            return [(sql, (error, processed_at, task_id)), (RECORD_ERROR, (task_id, attempt, error, processed_at))]


def _due_at(task: NewTask) -> float:
    """When a new task is due: its ``run_at``, but never before the moment it is stored (so tasks of
    one priority keep the order they were stored in)."""
    now = epoch_now()
    return now if task.run_at is None else max(task.run_at, now)


def _reply(to: pykka.ActorRef[Any], message: Any) -> bool:
    """Tell ``to``, unless it has stopped (then False): a stopping queue must not take the store down
    with it, since the store still has writes to commit. What the queue misses, a restart recovers."""
    try:
        to.tell(message)
    except pykka.ActorDeadError:
        logger.debug("%s stopped; %s not delivered", to, type(message).__name__)
        return False
    return True
