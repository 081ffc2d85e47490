"""WorkerActor: runs one task at a time and answers ack or nack.

Protocol
    receives  :class:`~actors.messages.Execute`
    sends     :class:`~actors.messages.Ack` with the result, or :class:`~actors.messages.Nack`
              with the error, to ``Execute.reply_to``;
              :class:`~actors.messages.WorkerFailed` to its supervisor if it dies
    replies   nothing

A failing action is a nack, never a dead worker: every exception an action raises becomes
a Nack (retryable unless it is :class:`~actors.actions.InvalidTaskData`).

Actions run on the worker's own action thread, so the worker can stop waiting for one that
runs past its timeout: the task is nacked (and retried), the stuck thread is interrupted
where Python allows it (an exception raised into it, as Dramatiq does) and abandoned, and a
fresh action thread takes its place. A worker whose start-up fails, or that raises outside
an action, tells its supervisor (the queue), which starts a new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pykka

from actors.actions import ActionRegistry, InvalidTaskData
from actors.base import Actor
from actors.messages import Ack, Execute, Nack, QueuedTask, WorkerFailed

__all__ = ["TaskTimedOut", "WorkerActor"]

logger = logging.getLogger(__name__)

_thread_numbers = itertools.count(1)


class TaskTimedOut(Exception):
    """Raised inside an action that ran past its timeout, to stop it."""


class ActionThread:
    """A daemon thread that runs the calls its worker hands it, one at a time.

    Calls and results pass through two ``queue.SimpleQueue`` (written in C: a hand-off costs
    a few microseconds, a Future several times that).
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()  # (raised, value)
        self._thread = threading.Thread(target=self._loop, name=f"action-thread-{next(_thread_numbers)}", daemon=True)
        self._thread.start()

    def call(self, function: Callable[[], Any], timeout_s: float) -> Any:
        """Run ``function`` on this thread; raise TimeoutError if it takes over ``timeout_s``."""
        self._calls.put(function)
        try:
            raised, value = self._results.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError from None
        if raised:
            raise value
        return value

    def stop(self) -> None:
        self._calls.put(None)

    def abandon(self) -> None:
        """Interrupt the call running now, where Python can, and let the thread end."""
        self.stop()
        if self._thread.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread.ident), ctypes.py_object(TaskTimedOut)
            )

    def _loop(self) -> None:
        with contextlib.suppress(TaskTimedOut):  # an interrupt that came between two calls
            while (function := self._calls.get()) is not None:
                try:
                    self._results.put((False, function()))
                except BaseException as e:  # noqa: BLE001 -- handed to the waiting worker
                    self._results.put((True, e))


class WorkerActor(Actor):
    """Receives Execute; sends Ack or Nack to its reply_to, WorkerFailed to its supervisor."""

    use_daemon_thread = True  # a stuck worker must not keep the process alive

    def __init__(
        self,
        actions: ActionRegistry,
        work_delay_s: float = 0.0,
        task_timeout_s: float = 60.0,
        supervisor: pykka.ActorRef[Any] | None = None,
    ) -> None:
        super().__init__()
        self._actions = actions
        self._work_delay_s = work_delay_s
        self._task_timeout_s = task_timeout_s
        self._supervisor = supervisor
        self._action_thread: ActionThread | None = None

    def on_start(self) -> None:
        try:
            self._action_thread = self._start_action_thread()
        except Exception as e:
            self._report_failure(e)
            raise

    def on_stop(self) -> None:
        if self._action_thread is not None:
            self._action_thread.stop()

    def on_failure(self, exception_type: Any, exception: Any, traceback: Any) -> None:
        self.on_stop()
        self._report_failure(exception)

    def on_receive(self, message: Any) -> None:
        match message:
            case Execute(task, reply_to):
                reply = self._run(task)
                try:
                    reply_to.tell(reply)
                except pykka.ActorDeadError:  # shutting down: the task stays running and runs again
                    logger.warning("task %s: finished after the queue stopped; it will run again", task.id)
                if self._action_thread is None:  # abandoned by a timeout
                    self._action_thread = self._start_action_thread()
            case _:
                raise TypeError(f"unexpected message {type(message).__name__}")

    def _start_action_thread(self) -> ActionThread:
        thread = ActionThread()
        try:
            thread.call(self._actions.run_setups, self._task_timeout_s)
        except BaseException:
            thread.abandon()
            raise
        return thread

    def _run(self, task: QueuedTask) -> Ack | Nack:
        assert self._action_thread is not None
        if self._work_delay_s:
            time.sleep(self._work_delay_s)  # the tutorial's simulated work
        action, timeout_s = self._actions.lookup(task.action)
        timeout_s = timeout_s or self._task_timeout_s
        try:
            result = self._action_thread.call(lambda: action(orjson.loads(task.payload)), timeout_s)
            if not isinstance(result, dict):
                raise InvalidTaskData(f"action {task.action!r} returned {type(result).__name__}, not an object")
            return Ack(task.id, orjson.dumps(result).decode())
        except TimeoutError:
            logger.warning("task %s: timed out after %g s; its action thread is abandoned", task.id, timeout_s)
            self._action_thread.abandon()
            self._action_thread = None
            return Nack(task.id, f"timed out after {timeout_s:g} s", retryable=True)
        except (InvalidTaskData, orjson.JSONEncodeError) as e:
            return Nack(task.id, str(e), retryable=False)
        except Exception as e:
            logger.warning("task %s: action %r raised %s", task.id, task.action, type(e).__name__)
            logger.debug("task %s: traceback", task.id, exc_info=True)
            return Nack(task.id, f"{type(e).__name__}: {e}", retryable=True)

    def _report_failure(self, error: BaseException | None) -> None:
        if self._supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._supervisor.tell(WorkerFailed(self.actor_ref, f"{type(error).__name__}: {error}"))
