"""Task control: ``POST /tasks/{id}/cancel``, ``POST /tasks/{id}/retry``, ``DELETE /tasks/{id}``
(on :class:`~api.tasks.TaskItem`), and ``POST /queue/pause`` and ``/queue/resume``."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from actors import NotAccepted, TaskSystem
from actors.messages import ControlResult

__all__ = ["QueuePause", "TaskCancel", "TaskRetry", "answer_control"]

RETRY_AFTER_S = 1


def answer_control(
    resp: falcon.Response, task_id: str, request: Callable[[str], ControlResult], refused: str
) -> ControlResult:
    """Run a control request on one task and answer it: 200 with the task's status, 404, 409 with
    ``refused`` (``{status}`` in it becomes the task's status) or 503."""
    try:
        result = request(task_id)
    except NotAccepted as e:
        raise falcon.HTTPServiceUnavailable(description=str(e), retry_after=RETRY_AFTER_S) from None
    if result.status is None:
        raise falcon.HTTPNotFound(description="task not found")
    if not result.done:
        raise falcon.HTTPConflict(description=refused.format(status=result.status))
    resp.media = {"id": task_id, "status": result.status}
    return result


class TaskCancel:
    """``POST /tasks/{id}/cancel``: a queued task never runs; a running one is interrupted; both end ``cancelled``."""

    def __init__(self, system: TaskSystem) -> None:
        self._system = system

    def on_post(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        answer_control(
            resp, task_id, self._system.cancel, "the task is {status}: only a queued or running task can be cancelled"
        )


class TaskRetry:
    """``POST /tasks/{id}/retry``: a failed or cancelled task is queued again, as a new series of attempts."""

    def __init__(self, system: TaskSystem) -> None:
        self._system = system

    def on_post(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        answer_control(
            resp, task_id, self._system.retry, "the task is {status}: only a failed or cancelled task can be retried"
        )


class QueuePause:
    """``POST /queue/pause`` (``paused=True``) or ``/queue/resume``: start no new task, or start again."""

    def __init__(self, system: TaskSystem, paused: bool) -> None:
        self._system = system
        self._paused = paused

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self._system.pause(self._paused)
        except NotAccepted as e:
            raise falcon.HTTPServiceUnavailable(description=str(e), retry_after=RETRY_AFTER_S) from None
        resp.media = {"paused": self._paused}
