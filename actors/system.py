"""Starting and stopping the actors, and the handle the API uses to reach them.

:func:`start_system` starts the actors in order: the MigrationActor runs and stops, then
the StoreActor starts, then the QueueActor, which starts the WorkerActors and supervises
them. :meth:`TaskSystem.stop` stops them in reverse: the queue stops dispatching, the
workers finish what they hold, the queue settles their replies, and the store commits the
last writes.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

import pykka

from actors.actions import ActionRegistry, registry
from actors.commit_signal import CommitSignal
from actors.db import TaskFilter, utc_now
from actors.dblock import DatabaseLock
from actors.engine import engine_for, safe_url
from actors.messages import (
    CancelMatching,
    CancelTask,
    ControlResult,
    DeleteTask,
    Drain,
    Inspect,
    Instance,
    Migrate,
    NewTask,
    QueueState,
    RetryFinished,
    RetryMatching,
    SetPaused,
    StoreState,
    Submit,
)
from actors.metrics import Gauge, Metrics
from actors.migration import MigrationActor
from actors.queue import QueueActor, QueueFull, ShuttingDown, StartWorker
from actors.reader import TaskReader
from actors.store import CommitUnknown, StoreActor, StoreError
from actors.tasklog import TaskReport
from actors.worker import WorkerActor
from conf import Config

__all__ = ["NotAccepted", "TaskSystem", "start_system"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
MIGRATION_TIMEOUT_S = 60.0
CONTROL_TIMEOUT_S = 10.0  # how long a control request (cancel, retry, delete) waits for its answer
BULK_TIMEOUT_S = 120.0  # and a bulk one, which goes 1,000 tasks per transaction
CANCEL_POLL_S = 0.05  # how often a cancel asked of another instance looks whether the task has ended
SETTLE_POLL_S = 0.01  # how often a stop looks whether the last outcomes are acked (distributed mode)


class NotAccepted(Exception):
    """Raised when a task cannot be committed now; the client should try again later.

    ``maybe_stored`` is True when the outcome is unknown: the store had taken the task but
    had not confirmed its commit in time. The client should then look the task up by its id
    before submitting it again. Otherwise the task was not stored, and never will be.
    """

    def __init__(self, reason: str, maybe_stored: bool = False) -> None:
        super().__init__(reason)
        self.maybe_stored = maybe_stored


@dataclass
class TaskSystem:
    """The running actors, as seen from the edges (the API, ``run.py``, tests)."""

    config: Config
    schema_version: int
    store: pykka.ActorRef[Any]
    queue: pykka.ActorRef[Any]
    reader: TaskReader
    lock: DatabaseLock | None  #: the SQLite file's (None on PostgreSQL, which many instances share)
    metrics: Metrics | None = None  #: None when metrics are turned off
    #: (distributed mode) a second StoreActor, on its own connection, for the queue's leases, claims and
    #: outcomes, so that they do not wait behind the submits' inserts
    flow_store: pykka.ActorRef[Any] | None = None
    accepting: bool = field(default=True)
    _waiting: dict[str, float] = field(default_factory=dict, init=False)  # task id -> when its submit began
    _waiting_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        if self.metrics is not None:
            self.metrics.add_gauges(self._gauges)

    def _gauges(self) -> Iterator[Gauge]:
        """The gauges of /metrics, read at each scrape: never a count of the tasks table."""
        counts = self.reader.counts()
        for status, n in counts.by_status.items():
            yield "tasks", "Tasks in the database, by status", n, {"status": status}
        yield "tasks_ready", "Queued tasks that are due: waiting for a worker", counts.ready, {}
        yield "tasks_delayed", "Queued tasks not due yet (delay_ms, run_at, or a retry's backoff)", counts.delayed, {}
        age = counts.oldest_ready_age_s or 0.0
        yield "oldest_ready_age_seconds", "How long the task due first has waited for a worker", age, {}
        queue = self.inspect()
        yield "tasks_in_flight", "Tasks handed to workers and not yet answered", queue.in_flight, {}
        yield "workers", "Workers alive", queue.workers, {}
        yield "paused", "1 while dispatching is paused (POST /queue/pause)", int(queue.paused), {}

    def submit(self, task: NewTask) -> str | None:
        """Return once ``task`` is committed; raise :class:`NotAccepted` if it is not.

        Returns None, or the id of the earlier task its idempotency key gave (nothing new is
        stored then); raises :class:`~actors.store.IdempotencyConflict` for a key used with
        another request.

        Submits wait for their commit on the caller's thread (a waitress request thread). When
        the store is stuck, ``max_stalled_submits`` of them waiting longer than ``stall_ms``
        is enough: further submits are refused at once, so request threads stay free for reads.
        """
        if not self.accepting:
            raise NotAccepted("shutting down")
        with self._waiting_lock:
            if self._stalled() >= self.config.server.max_stalled_submits:
                raise NotAccepted("the store is not keeping up; try again")
            self._waiting[task.id] = time.monotonic()
        try:
            earlier = self._submit(task)
        finally:
            with self._waiting_lock:
                started = self._waiting.pop(task.id)
        if self.metrics is not None and earlier is None:
            self.metrics.of_action(task.action).submitted.inc()
            self.metrics.submit_latency.observe(time.monotonic() - started)
        return earlier

    def _stalled(self) -> int:
        stalled_since = time.monotonic() - self.config.server.stall_ms / 1000
        stalled = 0
        for started in self._waiting.values():  # oldest first: dicts keep the order of insertion
            if started > stalled_since:
                break
            stalled += 1
        return stalled

    @property
    def pending_submits(self) -> tuple[int, int]:
        """Submits waiting for their commit right now, and how many of them for over ``stall_ms``."""
        with self._waiting_lock:
            return len(self._waiting), self._stalled()

    def _submit(self, task: NewTask) -> str | None:
        committed = CommitSignal()
        try:
            self.queue.tell(Submit(task, committed))
            return committed.get(timeout=self.config.server.submit_timeout_ms / 1000)
        except pykka.ActorDeadError:
            raise NotAccepted("the queue is not running") from None
        except pykka.Timeout:
            return self._give_up_waiting(committed)
        except CommitUnknown as e:
            raise NotAccepted(str(e), maybe_stored=True) from None
        except StoreError as e:
            raise NotAccepted(str(e)) from None
        except ShuttingDown:
            raise NotAccepted("shutting down") from None
        except QueueFull:
            raise NotAccepted("the queue is full; try again later") from None

    @staticmethod
    def _give_up_waiting(committed: CommitSignal) -> str | None:
        """After a submit's timeout: say whether its task was not stored, or may have been."""
        if committed.claim():  # the store had not taken it, and now never will
            raise NotAccepted("the store did not take the task in time; it was not stored, submit it again")
        try:
            return committed.get(timeout=0)  # the commit may have come in just now
        except pykka.Timeout:
            raise NotAccepted(
                "the store took the task but did not confirm its commit in time: look it up before submitting it again",
                maybe_stored=True,
            ) from None
        except StoreError as e:
            raise NotAccepted(str(e)) from None

    def cancel(self, task_id: str) -> ControlResult:
        """Cancel a queued task, or interrupt a running one; its status after, or why it could not be done.

        (Distributed mode) A task running on another instance is marked for that instance to cancel, which
        it sees within a relay step (``RELAY_EVERY_S``); this waits for the task to end, as it would here."""
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        answer: pykka.Future[ControlResult] = pykka.ThreadingFuture()
        self._tell(self.queue, CancelTask(task_id, answer))
        result = self._answer(answer)
        while result.status == "running" and result.done:  # asked of the instance running it
            if time.monotonic() > deadline:
                raise NotAccepted("the instance running the task was asked to cancel it and has not yet; look it up")
            time.sleep(CANCEL_POLL_S)
            task = self.reader.get(task_id)
            if task is not None and task["status"] != "running":
                result = ControlResult(task["status"], done=task["status"] == "cancelled")
        return result

    def retry(self, task_id: str) -> ControlResult:
        """Queue a failed or cancelled task again, as a new series of attempts."""
        answer: pykka.Future[ControlResult] = pykka.ThreadingFuture()
        self._tell(self.store, RetryFinished(task_id, answer, self.queue))
        return self._answer(answer)

    def delete(self, task_id: str) -> ControlResult:
        """Delete a finished task and its errors."""
        answer: pykka.Future[ControlResult] = pykka.ThreadingFuture()
        self._tell(self.store, DeleteTask(task_id, answer))
        return self._answer(answer)

    def retry_matching(self, filters: TaskFilter) -> int:
        """Queue again every failed or cancelled task ``filters`` matches (its statuses are some of those two);
        how many."""
        answer: pykka.Future[int] = pykka.ThreadingFuture()
        self._tell(self.store, RetryMatching(filters, answer, self.queue))
        return self._answer(answer, BULK_TIMEOUT_S)

    def cancel_matching(self, filters: TaskFilter) -> int:
        """Cancel every queued or running task ``filters`` matches (its statuses are some of those two);
        how many."""
        answer: pykka.Future[int] = pykka.ThreadingFuture()
        self._tell(self.queue, CancelMatching(filters, answer))
        return self._answer(answer, BULK_TIMEOUT_S)

    def pause(self, paused: bool) -> None:
        """Start nothing new while ``paused`` (submits are still committed), or start again."""
        answer: pykka.Future[bool] = pykka.ThreadingFuture()
        self._tell(self.queue, SetPaused(paused, answer))
        try:
            self._answer(answer)
        except NotAccepted as e:
            state = "paused" if paused else "resumed"
            raise NotAccepted(f"dispatching is {state} now, but it could not be kept for a restart: {e}") from None

    def _tell(self, ref: pykka.ActorRef[Any], message: Any) -> None:
        if not self.accepting:
            raise NotAccepted("shutting down")
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            raise NotAccepted("the service is stopping") from None

    @staticmethod
    def _answer(answer: pykka.Future[T], timeout_s: float = CONTROL_TIMEOUT_S) -> T:
        try:
            return answer.get(timeout=timeout_s)
        except pykka.Timeout:
            raise NotAccepted("no answer in time; look the task up before asking again") from None
        except StoreError as e:
            raise NotAccepted(str(e)) from None

    @property
    def where(self) -> str:
        """Where the tasks are kept and queued, for the start-up log."""
        if self.config.distributed:
            return (
                f"distributed: PostgreSQL {safe_url(self.config.store.url)},"
                f" RabbitMQ {safe_url(self.config.queue.url)} queue {self.config.queue.name}"
            )
        return f"database {Path(self.config.store.path).resolve()}"

    def problem(self) -> str | None:
        """Why the system cannot do its work, or None when the store and the queue are alive.

        The queue keeps its workers alive itself, and dies if it cannot.
        """
        for name, ref in (("store", self.store), ("queue's store", self.flow_store), ("queue", self.queue)):
            if ref is not None and not ref.is_alive():
                return f"the {name} actor is not running"
        return None

    def inspect(self, timeout: float = 1.0) -> QueueState:
        """What the queue holds now; raises pykka.Timeout or ActorDeadError if it does not answer."""
        state: QueueState = self.queue.ask(Inspect(), block=True, timeout=timeout)
        return state

    def inspect_store(self, timeout: float = 1.0) -> StoreState:
        """What the store is going through (the first fault of the two stores in the distributed mode);
        raises pykka.Timeout or ActorDeadError if one does not answer."""
        state: StoreState = self.store.ask(Inspect(), block=True, timeout=timeout)
        if self.flow_store is not None and state.fault is None:
            state = self.flow_store.ask(Inspect(), block=True, timeout=timeout)
        return state

    def stop(self, timeout: float = 8.0) -> None:
        """Stop accepting, let the workers finish what they hold, flush the store, stop all."""
        deadline = time.monotonic() + timeout
        self.stop_work(timeout)
        self.close(max(0.1, deadline - time.monotonic()))

    def stop_work(self, timeout: float) -> None:
        """Stop accepting and let the workers finish what they hold; the store and reads go on.

        A graceful stop calls this while the HTTP server still answers the requests it has
        received: a submit among them still gets its commit. :meth:`close` comes after.
        """
        self.accepting = False
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            return max(0.1, deadline - time.monotonic())

        workers: tuple[pykka.ActorRef[Any], ...] = ()
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            workers = self.queue.ask(Drain(), block=True, timeout=remaining())
        for ref in workers:
            _stop_actor(ref, remaining())
        self._wait_for_settles(deadline)
        _stop_actor(self.queue, remaining())

    def _wait_for_settles(self, deadline: float) -> None:
        """Distributed mode: before the queue closes its RabbitMQ connection, let the outcomes of the last
        tasks be committed and acked (else RabbitMQ delivers them again, and another instance would take
        a task over whose outcome is about to be written)."""
        while self.config.distributed and time.monotonic() < deadline:
            try:
                if self.inspect().settling == 0:
                    return
            except (pykka.ActorDeadError, pykka.Timeout):
                return
            time.sleep(SETTLE_POLL_S)

    def close(self, timeout: float) -> None:
        """Close the readers, then stop the store, which commits the last writes; release the database."""
        self.reader.close()  # before the store: the last connection to close checkpoints the WAL away
        deadline = time.monotonic() + timeout
        if self.flow_store is not None:
            _stop_actor(self.flow_store, timeout)
        _stop_actor(self.store, max(0.1, deadline - time.monotonic()))
        if self.lock is not None and not self.store.is_alive():  # a store still writing keeps the database
            self.lock.release()


def _stop_actor(ref: pykka.ActorRef[Any], timeout: float) -> None:
    try:
        ref.stop(timeout=timeout)
    except pykka.Timeout:
        logger.warning("%s did not stop in time; its task stays unfinished and runs after a restart", ref)


def start_system(config: Config, actions: ActionRegistry = registry) -> TaskSystem:
    """Lock the database (SQLite), migrate it, then start the store, the workers and the queue.

    Raises :class:`~actors.dblock.DatabaseInUse` if another process serves the SQLite file.
    """
    for module in config.workers.imports:
        importlib.import_module(module)
    lock = None if config.distributed else DatabaseLock(config.store.path)
    if lock is not None:
        lock.acquire()
    reader = TaskReader(engine_for(config.store))
    try:
        migration = MigrationActor.start(engine_for(config.store), check=config.store.check_on_start)
        schema_version: int = migration.ask(Migrate(), block=True, timeout=MIGRATION_TIMEOUT_S)
        migration.actor_stopped.wait(MIGRATION_TIMEOUT_S)
        paused = reader.paused()  # dispatching stays paused across a restart
        if config.distributed:
            _check_broker(config)
    except BaseException:
        reader.close()
        if lock is not None:
            lock.release()
        raise

    metrics = Metrics(actions.names()) if config.metrics.enabled else None
    store = StoreActor.start(
        engine_for(config.store),
        idempotency_window_s=config.store.idempotency_window_s,
        retention_s=config.store.retention_s,
        metrics=metrics,
    )

    def start_worker(supervisor: pykka.ActorRef[Any], interrupts: SimpleQueue[int]) -> pykka.ActorRef[Any]:
        delay_s = config.workers.work_delay_ms / 1000
        return WorkerActor.start(actions, delay_s, config.workers.task_timeout_s, supervisor, interrupts=interrupts)

    report = TaskReport(metrics, lines=config.log.tasks, task_data=config.log.task_data)
    if not config.distributed:
        queue = QueueActor.start(store, start_worker, config.queue, config.workers, report=report, paused=paused)
        return TaskSystem(config, schema_version, store, queue, reader, lock, metrics)
    instance = Instance(uuid.uuid4().hex, socket.gethostname(), os.getpid(), utc_now())
    flow_store = StoreActor.start(engine_for(config.store), metrics=metrics, folds_counts=False, instance=instance)
    queue = _start_broker_queue(config, store, start_worker, report, paused=paused, flow_store=flow_store)
    return TaskSystem(config, schema_version, store, queue, reader, lock, metrics, flow_store)


def _check_broker(config: Config) -> None:
    """Stop the start if RabbitMQ refuses the configuration; only warn if it is down now."""
    from actors.rabbitmq import check_broker  # (pika loads only in the distributed mode)

    down = check_broker(config.queue.url, config.queue.name)
    if down is not None:
        logger.warning(
            "RabbitMQ at %s cannot be reached now (%s): starting all the same; tasks are accepted into PostgreSQL"
            " and published once it is back",
            safe_url(config.queue.url),
            down,
        )


def _start_broker_queue(
    config: Config,
    store: pykka.ActorRef[Any],
    start_worker: StartWorker,
    report: TaskReport,
    *,
    paused: bool,
    flow_store: pykka.ActorRef[Any],
) -> pykka.ActorRef[Any]:
    """The distributed mode's queue, fed by RabbitMQ."""
    from actors.broker_queue import QOS_PER_PREFETCH, BrokerQueueActor  # (pika loads only in the distributed mode)
    from actors.rabbitmq import RabbitLink

    settings = config.queue

    def link(queue: pykka.ActorRef[Any], consumes: bool) -> RabbitLink:
        qos = settings.prefetch * QOS_PER_PREFETCH
        return RabbitLink(settings.url, settings.name, qos, settings.window, queue, consumes=consumes)

    return BrokerQueueActor.start(
        store, start_worker, settings, config.workers, report=report, paused=paused, link=link, flow_store=flow_store
    )
