"""TaskReport: what the QueueActor tells the world when an attempt ends: one log line and the metrics.

The line, on the ``task_queue.tasks`` logger::

    task 5f0c… uppercase attempt 1 completed in 0.4 ms
    task 9e1a… resize attempt 2 retried in 3.1 ms, again in 1000 ms: ConnectionError: refused
    task 9e1a… resize attempt 3 failed in 2.9 ms: ConnectionError: refused   (WARNING, with the traceback)

Completed, retried and cancelled attempts are logged at INFO; a task that failed for good at
WARNING; a failure an action raised as an unexpected exception comes with its traceback. The
task's data is left out unless ``log.task_data`` is set; ``log.tasks = false`` turns the lines
off. The fields are also given to the log record (``task_id``, ``action``, ``attempt``,
``outcome``, ``duration_ms``, ``error``), which the JSON log format writes out as they are.
"""

from __future__ import annotations

import logging

from actors.messages import QueuedTask
from actors.metrics import Metrics

__all__ = ["TaskReport", "one_line"]

logger = logging.getLogger("task_queue.tasks")


def one_line(text: str) -> str:
    """``text`` with its control characters escaped, so that what a client sent cannot start a log line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TaskReport:
    def __init__(self, metrics: Metrics | None = None, lines: bool = True, task_data: bool = False) -> None:
        self.metrics = metrics
        self._lines = lines
        self._task_data = task_data

    def finished(
        self,
        task: QueuedTask,
        attempt: int,
        outcome: str,
        duration_s: float,
        *,
        error: str | None = None,
        trace: str | None = None,
        retry_in_ms: int | None = None,
    ) -> None:
        """An attempt ended: ``outcome`` is completed, retried, failed or cancelled."""
        if self.metrics is not None:
            self._count(task.action, outcome, duration_s)
        level = logging.WARNING if outcome == "failed" else logging.INFO
        if not self._lines or not logger.isEnabledFor(level):
            return
        duration_ms = round(duration_s * 1000, 3)
        message = f"task {task.id} {one_line(task.action)} attempt {attempt} {outcome} in {duration_ms:.1f} ms"
        if retry_in_ms is not None:
            message += f", again in {retry_in_ms} ms"
        if error is not None:
            message += f": {one_line(error)}"
        fields = {
            "task_id": task.id,
            "action": task.action,
            "attempt": attempt,
            "outcome": outcome,
            "duration_ms": duration_ms,
            "error": error,
        }
        if self._task_data:
            message += f" data={task.payload}"
            fields["data"] = task.payload
        if trace is not None:  # indented, so no line of it can pass for a log line of its own
            message += "".join(f"\n    {line}" for line in trace.rstrip().splitlines())
        logger.log(level, "%s", message, extra={"task": fields})

    def _count(self, action: str, outcome: str, duration_s: float) -> None:
        assert self.metrics is not None
        of_action = self.metrics.of_action(action)
        of_action.outcomes[outcome].inc()
        of_action.duration.observe(duration_s)
