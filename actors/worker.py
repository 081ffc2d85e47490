"""WorkerActor: runs one task at a time and answers ack or nack.

Protocol
    receives  :class:`~actors.messages.Execute`
    sends     :class:`~actors.messages.Ack` with the result, or :class:`~actors.messages.Nack`
              with the error, to ``Execute.reply_to``
    replies   nothing

A failing action is a nack, never a dead worker: every exception an action raises becomes
a Nack (retryable unless it is :class:`~actors.actions.InvalidTaskData`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import pykka

from actors.actions import ActionRegistry, InvalidTaskData
from actors.messages import Ack, Execute, Nack

__all__ = ["WorkerActor"]

logger = logging.getLogger(__name__)


class WorkerActor(pykka.ThreadingActor):
    """Receives Execute; sends Ack or Nack to its reply_to."""

    use_daemon_thread = True  # a task stuck in an action must not keep the process alive

    def __init__(self, actions: ActionRegistry, work_delay_s: float = 0.0) -> None:
        super().__init__()
        self._actions = actions
        self._work_delay_s = work_delay_s

    def on_receive(self, message: Any) -> None:
        match message:
            case Execute(task, reply_to):
                reply = self._run(task.id, task.action, task.payload)
                try:
                    reply_to.tell(reply)
                except pykka.ActorDeadError:  # shutting down: the task stays running and runs again
                    logger.warning("task %s: finished after the queue stopped; it will run again", task.id)
            case _:
                raise TypeError(f"unexpected message {message!r}")

    def _run(self, task_id: str, action: str, payload: str) -> Ack | Nack:
        if self._work_delay_s:
            time.sleep(self._work_delay_s)  # the tutorial's simulated work
        try:
            result = self._actions.lookup(action)(orjson.loads(payload))
            if not isinstance(result, dict):
                raise InvalidTaskData(f"action {action!r} returned {type(result).__name__}, not an object")
            return Ack(task_id, orjson.dumps(result).decode())
        except (InvalidTaskData, orjson.JSONEncodeError) as e:
            return Nack(task_id, str(e), retryable=False)
        except Exception as e:
            logger.warning("task %s: action %r raised", task_id, action, exc_info=True)
            return Nack(task_id, f"{type(e).__name__}: {e}", retryable=True)
