"""QueueActor: has tasks stored, hands them to the workers, settles their acks and nacks,
and supervises the workers.

Protocol
    receives  :class:`~actors.messages.Submit`      -> tells the store InsertTask, or refuses it
                                                       when ``max_backlog`` tasks are unfinished
              :class:`~actors.messages.Recovered`   (store) -> learns the backlog left by a previous run
              :class:`~actors.messages.TasksStored` (store) -> dispatches them
              :class:`~actors.messages.ReadyTasks`  (store) -> dispatches them
              :class:`~actors.messages.Ack`  (worker) -> tells the store CompleteTask
              :class:`~actors.messages.Nack` (worker) -> tells the store RetryTask or FailTask
              :class:`~actors.messages.WorkerFailed` (worker) -> starts a new worker
              :class:`~actors.messages.Wake` (its timer) -> looks for retries that are due
              :class:`~actors.messages.CancelTask` (edge) -> takes it out of the window and tells the store
                                                       CancelQueued, or interrupts its worker and,
                                                       once nacked, tells the store CancelRunning
              :class:`~actors.messages.TaskCancelled` (store) -> forgets the cancel under way
              :class:`~actors.messages.CancelMatching` (edge) -> holds dispatching and tells the store
                                                       CancelQueuedMatching
              :class:`~actors.messages.MatchingCancelled` (store) -> interrupts the running ones the
                                                       filter matched, answers, dispatches again
              :class:`~actors.messages.Requeued` (store) -> knows more tasks wait in the store
              :class:`~actors.messages.SetPaused` (edge) -> dispatches nothing new, or again; tells the
                                                       store SavePaused, which answers
              :class:`~actors.messages.Drain` (shutdown, by ask) -> dispatches nothing more
              :class:`~actors.messages.Inspect` (edges, by ask)
    sends     Execute to the workers; MarkRunning, FetchReady, RequeueUnfinished to the store
    replies   to Drain: the workers, for shutdown to stop; to Inspect: a QueueState

The store is the source of truth; this actor holds only a bounded window of ready tasks
(``window``) and at most ``prefetch`` tasks in flight across the workers. New tasks go
straight into the window while it has room and nothing older waits in the store; otherwise
they wait in the store (``backlog``) and are fetched, highest priority first, then in the
order they became due, when the window is empty. A new task that outranks the window's last
joins it all the same; a delayed task waits in the store until its timer (``Wake``) says it
is due, and then the window is fetched afresh.
On start it re-queues what a previous run left running, then fetches: delivery is
at-least-once. A nack is retried after an exponential backoff until ``max_attempts``, then
the task fails with its last error kept (the dead letter).

Supervision: the queue starts the workers and keeps the pool at its size. A worker that
dies is replaced, and the tasks it held are nacked (so retried, or failed once out of
attempts). More than ``max_restarts`` restarts within ``restart_window_s`` means something
is wrong beyond one task: the queue gives up and dies, which stops the process (let it crash).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

import pykka

from actors.base import Actor
from actors.commit_signal import CommitSignal
from actors.db import epoch_now, utc_now
from actors.messages import (
    Ack,
    CancelMatching,
    CancelQueued,
    CancelQueuedMatching,
    CancelRunning,
    CancelTask,
    CompleteTask,
    ControlResult,
    Drain,
    Execute,
    FailTask,
    FetchReady,
    InsertTask,
    Inspect,
    MarkRunning,
    MatchingCancelled,
    Nack,
    NewTask,
    QueuedTask,
    QueueState,
    ReadyTasks,
    Recovered,
    Requeued,
    RequeueUnfinished,
    RetryTask,
    SavePaused,
    SetPaused,
    Submit,
    TaskCancelled,
    TasksStored,
    Wake,
    WorkerFailed,
)
from actors.tasklog import TaskReport
from actors.throughput import Throughput
from actors.timers import tell_later
from actors.window import ReadyWindow
from conf import QueueConfig, WorkersConfig

__all__ = ["QueueActor", "QueueFull", "ShuttingDown", "StartWorker", "WorkerPoolFailed"]

logger = logging.getLogger(__name__)


class ShuttingDown(Exception):
    """Raised (through a ``committed`` future) when a task is submitted during shutdown."""


class QueueFull(Exception):
    """Raised (through a ``committed`` future) when the backlog is at ``max_backlog``."""


class WorkerPoolFailed(Exception):
    """Raised when workers die faster than the restart limit allows."""


# (supervisor, the worker's cancel mailbox) -> new worker
StartWorker = Callable[[pykka.ActorRef[Any], SimpleQueue[int]], pykka.ActorRef[Any]]


@dataclass(frozen=True, slots=True)
class InFlight:
    """A task handed to a worker and not yet answered."""

    task: QueuedTask
    worker: int  #: the worker's slot
    attempt: int
    dispatch: int  #: the number of this hand-over, which a cancel names


class QueueActor(Actor):
    """Receives Submit, stored and ready tasks, acks and nacks; sends Execute and store writes."""

    def __init__(
        self,
        store: pykka.ActorRef[Any],
        start_worker: StartWorker,
        settings: QueueConfig,
        pool: WorkersConfig,
        *,
        report: TaskReport | None = None,
        paused: bool = False,
    ) -> None:
        super().__init__()
        self._report = report or TaskReport()
        self._store = store
        self._start_worker = start_worker
        self._settings = settings
        self._pool = pool
        self._workers: list[pykka.ActorRef[Any]] = []
        self._restarts: deque[float] = deque()  # monotonic times of recent restarts
        self._restart_count = 0
        self._ready = ReadyWindow(settings.window)
        self._backlog = True  # the store may hold ready tasks that are not in _ready
        self._fetching = False
        self._stale = False  # the fetch under way was asked before the window had to be fetched afresh
        self._in_flight: dict[str, InFlight] = {}  # by task id
        self._dispatches = 0  # hand-overs so far, numbering them
        self._load = [0] * pool.count  # tasks in flight per worker
        self._draining = False
        self._paused = paused  # dispatching nothing new: kept by the store across restarts
        self._holding = 0  # bulk cancels waiting for the store: nothing is dispatched meanwhile
        self._unfinished = 0  # committed tasks not yet completed or failed
        self._cancels_asked: Counter[str] = Counter()  # ids the store is cancelling (how many times): not dispatched
        self._cancelling: dict[str, list[pykka.Future[ControlResult]]] = {}  # in flight, interrupt sent: askers
        self._interrupts: list[SimpleQueue[int]] = []  # each worker's cancel mailbox, by slot
        self._throughput = Throughput()
        self._wake_timer: threading.Timer | None = None
        self._wake_at: float | None = None
        self._settling = 0  # (distributed mode) outcomes written and not yet acked

    def on_start(self) -> None:
        if self._paused:
            logger.warning("dispatching is paused, as it was before the restart: POST /queue/resume starts it")
        self._interrupts = [SimpleQueue() for _ in range(self._pool.count)]
        self._workers = [self._start_worker(self.actor_ref, interrupts) for interrupts in self._interrupts]
        self._recover()
        self._dispatch()

    def _recover(self) -> None:
        """At start: the tasks a previous run left running are queued again; then the window is fetched."""
        self._store.tell(RequeueUnfinished(self._settings.max_attempts, self.actor_ref))

    def on_stop(self) -> None:
        self._cancel_wake()

    def on_failure(self, *exc_info: Any) -> None:
        self._cancel_wake()

    def on_receive(self, message: Any) -> Any:
        match message:
            case Submit(task, committed):
                self._submit(task, committed)
            case Recovered(unfinished):
                self._unfinished += unfinished
            case TasksStored(tasks):
                self._unfinished += len(tasks)
                self._take_stored(tasks)
            case ReadyTasks(tasks, next_due_at):
                self._take_ready(tasks, next_due_at)
            case Ack():
                self._ack(message)
            case Nack():
                self._nack(message)
            case Wake():
                self._wake()
            case WorkerFailed(worker, error):
                self._replace_worker(worker, error)
            case CancelTask() | TaskCancelled() | SetPaused() | CancelMatching() | MatchingCancelled() | Requeued():
                self._control(message)
            case Drain():
                self._draining = True
                self._cancel_wake()
                logger.info("draining: %d tasks in flight", len(self._in_flight))
                return tuple(self._workers)
            case Inspect():
                return QueueState(
                    ready=len(self._ready),
                    in_flight=len(self._in_flight),
                    backlog=self._backlog,
                    draining=self._draining,
                    paused=self._paused,
                    cancelling=len(self._cancelling),
                    workers=sum(worker.is_alive() for worker in self._workers),
                    worker_restarts=self._restart_count,
                    unfinished=self._unfinished,
                    finished_per_minute=self._throughput.per_minute(),
                    broker_down=self.broker_down(),
                    settling=self._settling,
                )
            case _:
                raise TypeError(f"unexpected message {message!r}")
        self._dispatch()
        return None

    def broker_down(self) -> str | None:
        """Why the queue cannot reach its broker now (None: it can, or it has none)."""
        return None

    def _submit(self, task: NewTask, committed: CommitSignal) -> None:
        if self._draining:
            committed.set_exception((ShuttingDown, ShuttingDown("shutting down"), None))
        elif self._unfinished >= self._settings.max_backlog:
            committed.set_exception((QueueFull, QueueFull(f"{self._unfinished} tasks waiting"), None))
        else:
            self._store.tell(InsertTask(task, committed, self.actor_ref))

    def _control(
        self, message: CancelTask | TaskCancelled | SetPaused | CancelMatching | MatchingCancelled | Requeued
    ) -> None:
        match message:
            case CancelMatching(filters, answer):
                # Nothing is dispatched until the store answers, so no task it cancels starts meanwhile.
                self._holding += 1
                self._store.tell(CancelQueuedMatching(filters, answer, self.actor_ref))
            case MatchingCancelled(cancelled, running, answer, written):
                self._holding -= 1
                self._refetch()  # the window may hold tasks the store has cancelled
                self._unfinished -= cancelled
                if written:  # else the store has told the asker why it stopped
                    answer.set(cancelled + self._interrupt_all(running))
            case Requeued(count, top_priority):
                self._unfinished += count
                self._backlog = True  # they are due now: after the window, unless one outranks it
                if self._ready.outranks_lowest(top_priority):
                    self._refetch()
            case CancelTask(task_id, answer):
                self._cancel(task_id, answer)
            case TaskCancelled(task_id, cancelled):
                self._cancels_asked[task_id] -= 1
                if self._cancels_asked[task_id] <= 0:
                    del self._cancels_asked[task_id]
                if cancelled:
                    self._unfinished -= 1
                    self._ready.remove(task_id)
                else:
                    self._backlog = True  # not cancelled after all: if it waits, it is in the store
            case SetPaused(paused, answer):
                self._paused = paused  # from now on; the store keeps it for the next start
                self._store.tell(SavePaused(paused, answer))
                logger.info("dispatching %s", "paused" if paused else "resumed")

    def _cancel(self, task_id: str, answer: pykka.Future[ControlResult]) -> None:
        """A task in flight is interrupted on its worker; any other is cancelled in the store if it is queued."""
        if task_id in self._in_flight:
            self._interrupt(task_id, answer)
            return
        self._ready.remove(task_id)
        self._cancels_asked[task_id] += 1
        self._store.tell(CancelQueued(task_id, answer, self.actor_ref))

    def _interrupt(self, task_id: str, answer: pykka.Future[ControlResult] | None = None) -> bool:
        """Interrupt a task in flight on its worker; it ends cancelled. False if it is not in flight."""
        flight = self._in_flight.get(task_id)
        if flight is None:
            return False
        answers = self._cancelling.setdefault(task_id, [])
        if answer is not None:
            answers.append(answer)
        self._interrupts[flight.worker].put(flight.dispatch)  # read by the worker's stopwatch
        logger.info("task %s: cancelling it on worker %d", task_id, flight.worker)
        return True

    def _interrupt_all(self, running: tuple[str, ...]) -> int:
        """Interrupt the tasks of a bulk cancel that run here; how many were."""
        return sum(self._interrupt(task_id) for task_id in running)

    def _wake(self) -> None:
        """The timer of the next due task: fetch again, since what is due now may outrank the window."""
        self._wake_timer = self._wake_at = None
        self._refetch()

    def _refetch(self) -> None:
        """Let go of the window and fetch it again from the store; a fetch under way is stale and done again."""
        self._backlog = True
        if self._fetching:
            self._stale = True
        else:
            self._ready.clear()

    def _take_stored(self, tasks: tuple[QueuedTask, ...]) -> None:
        """New tasks join the window, unless tasks that run before them wait in the store: then they
        wait there too and are fetched in their turn. A task that outranks the window's last joins it
        all the same (the window always holds the first tasks to run), and the last waits instead."""
        now = epoch_now()
        for task in tasks:
            if task.available_at > now:  # delayed: it waits in the store until it is due
                self._schedule_wake(task.available_at)
                continue
            joins = not self._backlog or (not self._fetching and self._ready.outranks_lowest(task.priority))
            if joins and self._ready.add(task) is not None:
                self._backlog = True

    def _take_ready(self, tasks: tuple[QueuedTask, ...], next_due_at: float | None) -> None:
        self._fetching = False
        if self._stale:  # asked before something outranking it became due: they stay in the store, fetch again
            self._stale = False
            self._backlog = True
            return
        for task in tasks:
            self._ready.add(task)
        self._backlog = len(tasks) == self._settings.window
        if next_due_at is not None:
            self._schedule_wake(next_due_at)

    def _settle(self, task_id: str, attempt: int) -> InFlight | None:
        """Forget a task that came back from its worker, unless the answer is for another attempt."""
        flight = self._in_flight.get(task_id)
        if flight is None or flight.attempt != attempt:
            logger.warning("task %s: answer to attempt %d, which is not in flight, ignored", task_id, attempt)
            return None
        del self._in_flight[task_id]
        self._load[flight.worker] -= 1
        return flight

    def _ack(self, answer: Ack) -> None:
        flight = self._settle(answer.task_id, answer.attempt)
        if flight is None:
            return
        self._unfinished -= 1
        self._throughput.record()
        self._write_outcome(flight, CompleteTask(answer.task_id, answer.result, utc_now()))
        self._report.finished(flight.task, flight.attempt, "completed", answer.duration_s)
        for asker in self._cancelling.pop(answer.task_id, []):  # it finished before the interrupt reached it
            asker.set(ControlResult("completed", done=False))

    def _nack(self, answer: Nack) -> None:
        task_id, attempt, error = answer.task_id, answer.attempt, answer.error
        flight = self._settle(task_id, attempt)
        if flight is None:
            return
        report = functools.partial(self._report.finished, flight.task, attempt, duration_s=answer.duration_s)
        if task_id in self._cancelling:  # whatever ended it, it was cancelled: not retried
            self._unfinished -= 1
            self._write_outcome(flight, CancelRunning(task_id, error, utc_now(), tuple(self._cancelling.pop(task_id))))
            report("cancelled", error=error)
            return
        if answer.retryable and attempt < self._settings.max_attempts:
            backoff_ms = min(self._settings.retry_backoff_ms * 2 ** (attempt - 1), self._settings.retry_backoff_max_ms)
            due = epoch_now() + backoff_ms / 1000
            self._write_outcome(flight, RetryTask(task_id, attempt, error, due, utc_now()))
            self._backlog = True
            self._schedule_wake(due)
            report("retried", error=error, trace=answer.traceback, retry_in_ms=backoff_ms)
        else:
            self._unfinished -= 1
            self._throughput.record()
            self._write_outcome(flight, FailTask(task_id, attempt, error, utc_now()))
            report("failed", error=error, trace=answer.traceback)

    def _write_outcome(self, flight: InFlight, update: CompleteTask | CancelRunning | RetryTask | FailTask) -> None:
        """Have the store write how a task's attempt ended."""
        self._store.tell(update)

    def _replace_worker(self, worker: pykka.ActorRef[Any], error: str) -> None:
        if worker not in self._workers:
            return  # already replaced
        slot = self._workers.index(worker)
        lost = [flight for flight in self._in_flight.values() if flight.worker == slot]
        if self._draining:
            logger.error(
                "worker %d failed while stopping (%s); its %d tasks run after a restart", slot, error, len(lost)
            )
            return
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts[0] < now - self._pool.restart_window_s:
            self._restarts.popleft()
        if len(self._restarts) > self._pool.max_restarts:
            raise WorkerPoolFailed(
                f"workers failed {len(self._restarts)} times in {self._pool.restart_window_s} s; last: {error}"
            )
        self._restart_count += 1
        self._interrupts[slot] = SimpleQueue()
        self._workers[slot] = self._start_worker(self.actor_ref, self._interrupts[slot])
        logger.error(
            "worker %d failed (%s); started a new one (restart %d of %d allowed in %d s); %d of its tasks are retried",
            slot,
            error,
            len(self._restarts),
            self._pool.max_restarts,
            self._pool.restart_window_s,
            len(lost),
        )
        if self._report.metrics is not None:
            self._report.metrics.worker_restarts.inc()
        for flight in lost:
            self._nack(Nack(flight.task.id, flight.attempt, f"the worker running it failed: {error}", retryable=True))

    def _dispatch(self) -> None:
        if self._draining or self._paused or self._holding:
            return
        while self._ready and len(self._in_flight) < self._settings.prefetch:
            task = self._ready.pop()
            if self._being_cancelled(task.id):
                continue
            worker = self._load.index(min(self._load))
            self._dispatches += 1
            self._in_flight[task.id] = InFlight(task, worker, task.attempts + 1, self._dispatches)
            self._load[worker] += 1
            self._mark_running(task)
            try:
                self._workers[worker].tell(Execute(task, self.actor_ref, self._dispatches))
            except pykka.ActorDeadError:  # it died and its WorkerFailed is still on the way
                self._replace_worker(self._workers[worker], "it had stopped")
        self._refill()

    def _being_cancelled(self, task_id: str) -> bool:
        """Whether the store is cancelling this task of the window (so it is not dispatched)."""
        return task_id in self._cancels_asked

    def _mark_running(self, task: QueuedTask) -> None:
        self._store.tell(MarkRunning(task.id, utc_now()))

    def _refill(self) -> None:
        """Once the window is empty, fetch the next tasks to run from the store, if it may hold some."""
        if not self._ready and self._backlog and not self._fetching:
            self._fetching = True
            self._store.tell(FetchReady(self._settings.window, self.actor_ref))

    def _schedule_wake(self, due: float) -> None:
        if self._wake_at is not None and self._wake_at <= due:
            return
        self._cancel_wake()
        self._wake_at = due
        self._wake_timer = tell_later(self.actor_ref, Wake(), due - epoch_now())

    def _cancel_wake(self) -> None:
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        self._wake_timer = self._wake_at = None
