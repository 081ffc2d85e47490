"""Task control: ``POST /tasks/{id}/cancel``, ``POST /tasks/{id}/retry``, ``DELETE /tasks/{id}``
(on :class:`~api.tasks.TaskItem`), and ``POST /queue/pause`` and ``/queue/resume``."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from actors import NotAccepted, TaskSystem
from actors.messages import ControlResult

__all__ = ["QueuePause", "TaskAction", "answer_control", "cancel_and_retry"]

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


class TaskAction:
    """``POST /tasks/{id}/cancel`` and ``/retry``: a control request on one task, answered as
    :func:`answer_control` says."""

    def __init__(self, request: Callable[[str], ControlResult], refused: str) -> None:
        self._request = request
        self._refused = refused

    def on_post(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        answer_control(resp, task_id, self._request, self._refused)


def cancel_and_retry(system: TaskSystem) -> dict[str, TaskAction]:
    """The routes of the task actions, by path."""
    return {
        # A queued task never runs; a running one is interrupted; both end cancelled.
        "/tasks/{task_id}/cancel": TaskAction(
            system.cancel, "the task is {status}: only a queued or running task can be cancelled"
        ),
        # A failed or cancelled task is queued again, as a new series of attempts.
        "/tasks/{task_id}/retry": TaskAction(
            system.retry, "the task is {status}: only a failed or cancelled task can be retried"
        ),
    }


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
