"""``GET /stats``: what the queue holds and does, in numbers, for people and the dashboard.

Counts come from the ``task_counts`` table the store keeps by triggers (never a count of the
tasks table), the rest from the queue's ``Inspect``: a few milliseconds with a million tasks.
"""

from __future__ import annotations

import falcon
import pykka

from actors import TaskSystem
from api.control import RETRY_AFTER_S
from api.tasks import readable

__all__ = ["Stats"]


class Stats:
    def __init__(self, system: TaskSystem) -> None:
        self._system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with readable():
            counts = self._system.reader.counts()
        try:
            queue = self._system.inspect()
        except (pykka.Timeout, pykka.ActorDeadError):
            raise falcon.HTTPServiceUnavailable(
                description="the queue does not answer", retry_after=RETRY_AFTER_S
            ) from None
        per_minute = queue.finished_per_minute
        resp.media = {
            "counts": counts.by_status,
            "actions": counts.by_action,
            "ready": counts.ready,
            "delayed": counts.delayed,
            "in_flight": queue.in_flight,
            "oldest_ready_age_s": counts.oldest_ready_age_s,
            "throughput": {
                "last_minute": per_minute[-1] if per_minute else 0,
                "last_hour": sum(per_minute),
                "per_minute": list(per_minute),
            },
            "paused": queue.paused,
            "workers": queue.workers,
        }
