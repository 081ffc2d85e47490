"""``GET /health``: 200 once the schema is migrated, the store is alive and the queue answers."""

from __future__ import annotations

import falcon
import pykka

from actors import TaskSystem

__all__ = ["Health"]


class Health:
    def __init__(self, system: TaskSystem) -> None:
        self._system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        problem = self._system.problem() or (None if self._system.accepting else "shutting down")
        if problem is None:
            try:
                queue = self._system.inspect()
            except (pykka.Timeout, pykka.ActorDeadError):
                problem = "the queue does not answer"
        if problem is not None:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "error": problem}
            return
        pending, stalled = self._system.pending_submits
        resp.media = {
            "status": "ok",
            "schema_version": self._system.schema_version,
            "workers": queue.workers,
            "worker_restarts": queue.worker_restarts,
            "backlog": queue.unfinished,
            "ready": queue.ready,
            "in_flight": queue.in_flight,
            "pending_submits": pending,
            "stalled_submits": stalled,
        }
