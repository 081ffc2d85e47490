"""WorkerActor: runs one task at a time and answers ack or nack.

Protocol
    receives  :class:`~actors.messages.Execute`; dispatch numbers to cancel, in its cancel mailbox
    sends     :class:`~actors.messages.Ack` with the result, or :class:`~actors.messages.Nack`
              with the error, to ``Execute.reply_to``;
              :class:`~actors.messages.WorkerFailed` to its supervisor if it dies or is stuck
    replies   nothing

A failing action is a nack, never a dead worker: every exception an action raises becomes
a Nack (retryable unless it is :class:`~actors.actions.InvalidTaskData`).

Timeouts: each worker has a stopwatch thread. When a task runs past its timeout, the
stopwatch raises :class:`TaskTimedOut` inside it (as Dramatiq does), so the task is nacked
and retried and the worker goes on. Python delivers that exception only between bytecodes:
an action blocked in C (a socket read without a timeout, say) does not see it. If the task
is still running a grace period later, the stopwatch reports the worker as stuck; its
supervisor (the queue) starts another in its place and retries the tasks it held, and the
stuck worker, should it ever return, runs nothing more. A worker whose start-up fails, or
that raises outside an action, tells its supervisor too.

Cancels: a dispatch number (``Execute.dispatch``) put in the worker's cancel mailbox
(``interrupts``, made by its supervisor and read by its stopwatch) has its task interrupted
the same way, with :class:`TaskCancelled`, if it is running, or not run at all if it is
still waiting in the worker's inbox; either way the worker nacks it, not to be retried. A
number names one hand-over, so a cancel that comes too late matches nothing, not a later
run of the same task.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
import traceback
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

import orjson
import pykka

from actors.actions import ActionRegistry, InvalidTaskData
from actors.base import Actor
from actors.jsonvalues import NotStorable, check_storable
from actors.messages import Ack, Execute, Nack, QueuedTask, WorkerFailed

__all__ = ["TaskCancelled", "TaskTimedOut", "WorkerActor"]

logger = logging.getLogger(__name__)

POLL_S = 0.05  # how often a stopwatch looks at the clock
GRACE_S = 1.0  # how long an interrupted task has to return before its worker counts as stuck


class TaskTimedOut(Exception):
    """Raised inside an action that ran past its timeout, to stop it."""


class TaskCancelled(Exception):
    """Raised inside an action whose task was cancelled, to stop it."""


class Stopwatch(threading.Thread):
    """Watches the task its worker runs: interrupts it at its deadline or when it is cancelled, and
    reports the worker stuck if the task does not return within the grace period after that.

    Cancels arrive in ``interrupts``, the stopwatch's own mailbox (dispatch numbers), which the
    supervisor made and gave the worker: the worker's inbox is not read while it runs a task.
    """

    def __init__(
        self, worker_thread: int, on_stuck: Callable[[str], None], grace_s: float, interrupts: SimpleQueue[int]
    ) -> None:
        super().__init__(name=f"stopwatch-{worker_thread}", daemon=True)
        self._worker_thread = worker_thread
        self._on_stuck = on_stuck
        self._grace_s = grace_s
        self._running: tuple[int, str, float, int] | None = None  # (run number, task id, deadline, dispatch)
        self._stopped = threading.Event()
        self.interrupts = interrupts  # dispatch numbers (Execute.dispatch) to cancel
        self._cancelled: set[int] = set()  # cancelled and not yet met
        self._lock = threading.Lock()

    def begin(self, run: int, task_id: str, timeout_s: float, dispatch: int) -> None:
        self._running = (run, task_id, time.monotonic() + timeout_s, dispatch)

    def end(self) -> None:
        self._running = None

    def stop(self) -> None:
        self._stopped.set()

    def cancelled(self, dispatch: int) -> bool:
        """Whether the task handed over as ``dispatch`` has been cancelled (and forget it); the worker asks
        before it runs a task."""
        with self._lock:
            while not self.interrupts.empty():
                self._cancelled.add(self.interrupts.get())
            if dispatch in self._cancelled:
                self._cancelled.discard(dispatch)
                return True
            return False

    def run(self) -> None:
        interrupted = 0
        give_up_at = 0.0
        while not self._stopped.wait(POLL_S):
            running = self._running
            if running is None:
                continue
            run, task_id, deadline, dispatch = running
            if run == interrupted:
                if time.monotonic() > give_up_at:
                    self._on_stuck(task_id)
                    return
                continue
            cancelled = self.cancelled(dispatch)
            if cancelled or time.monotonic() >= deadline:
                interrupted, give_up_at = run, time.monotonic() + self._grace_s
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._worker_thread), ctypes.py_object(TaskCancelled if cancelled else TaskTimedOut)
                )


class WorkerActor(Actor):
    """Receives Execute; sends Ack or Nack to its reply_to, WorkerFailed to its supervisor."""

    use_daemon_thread = True  # a stuck worker must not keep the process alive

    def __init__(
        self,
        actions: ActionRegistry,
        work_delay_s: float = 0.0,
        task_timeout_s: float = 60.0,
        supervisor: pykka.ActorRef[Any] | None = None,
        *,
        grace_s: float = GRACE_S,
        interrupts: SimpleQueue[int] | None = None,
    ) -> None:
        super().__init__()
        self._interrupts: SimpleQueue[int] = SimpleQueue() if interrupts is None else interrupts
        self._actions = actions
        self._work_delay_s = work_delay_s
        self._task_timeout_s = task_timeout_s
        self._supervisor = supervisor
        self._grace_s = grace_s
        self._stopwatch: Stopwatch | None = None
        self._runs = 0
        self._stuck = False  # set by the stopwatch: this worker has been replaced

    def on_start(self) -> None:
        try:
            self._actions.run_setups()
        except Exception as e:
            self._report_failure(f"{type(e).__name__}: {e}")
            raise
        self._stopwatch = Stopwatch(threading.get_ident(), self._give_up, self._grace_s, self._interrupts)
        self._stopwatch.start()

    def on_stop(self) -> None:
        if self._stopwatch is not None:
            self._stopwatch.stop()
            self._stopwatch.join()

    def on_failure(self, exception_type: Any, exception: Any, traceback: Any) -> None:
        self.on_stop()
        self._report_failure(f"{type(exception).__name__}: {exception}")

    def on_receive(self, message: Any) -> None:
        if self._stuck:  # replaced while stuck: run nothing more
            self.stop()
            return
        match message:
            case Execute(task, reply_to, dispatch):
                reply = self._run(task, dispatch)
                if self._stuck:  # replaced meanwhile: the task is someone else's now, and the answer stale
                    self.stop()
                    return
                try:
                    reply_to.tell(reply)
                except pykka.ActorDeadError:  # shutting down: the task stays running and runs again
                    logger.warning("task %s: finished after the queue stopped; it will run again", task.id)
            case _:
                raise TypeError(f"unexpected message {type(message).__name__}")

    def _run(self, task: QueuedTask, dispatch: int) -> Ack | Nack:
        assert self._stopwatch is not None
        started = time.perf_counter()  # the duration reported counts the simulated work too
        action, timeout_s = self._actions.lookup(task.action)
        timeout_s = timeout_s or self._task_timeout_s
        attempt = task.attempts + 1
        if self._stopwatch.cancelled(dispatch):
            return Nack(task.id, attempt, "cancelled before it ran", retryable=False)
        self._runs += 1
        self._stopwatch.begin(self._runs, task.id, timeout_s, dispatch)

        def failed(error: str, retryable: bool, trace: str | None = None) -> Nack:
            return Nack(task.id, attempt, error, retryable, time.perf_counter() - started, trace)

        try:
            if self._work_delay_s:
                simulate_work(self._work_delay_s)
            result = action(orjson.loads(task.payload))
            if not isinstance(result, dict):
                raise InvalidTaskData(f"action {task.action!r} returned {type(result).__name__}, not an object")
            check_storable(result, "the result")
            return Ack(task.id, attempt, orjson.dumps(result).decode(), time.perf_counter() - started)
        except TaskTimedOut:
            return failed(f"timed out after {timeout_s:g} s", retryable=True)
        except TaskCancelled:
            return failed("cancelled while it ran", retryable=False)
        except (InvalidTaskData, NotStorable, orjson.JSONEncodeError) as e:
            return failed(str(e), retryable=False)
        except Exception as e:  # noqa: BLE001 -- whatever an action raises is a nack, never a dead worker
            return failed(f"{type(e).__name__}: {e}", retryable=True, trace=traceback.format_exc())
        finally:
            self._stopwatch.end()

    def _give_up(self, task_id: str) -> None:
        """Run by the stopwatch: the task ignored its interrupt; let the supervisor replace us."""
        self._stuck = True
        logger.error("task %s: still running after its interrupt (timeout or cancel); the worker is stuck", task_id)
        self._report_failure(f"stuck in task {task_id} after its interrupt")

    def _report_failure(self, error: str) -> None:
        if self._supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._supervisor.tell(WorkerFailed(self.actor_ref, error))


def simulate_work(seconds: float) -> None:
    """The tutorial's simulated work (``workers.work_delay_ms``), part of the task's run: slept in slices, so
    that a cancel or a timeout interrupts it as it would an action's Python code."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, POLL_S))
