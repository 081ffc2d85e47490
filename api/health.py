"""``GET /health``: 200 when the service can take and run tasks; 503 with the reason when it cannot
(an actor has stopped, the store cannot write, the database file is damaged, or it is shutting down).

In the distributed mode it says whether RabbitMQ is connected, and stays 200 while it is not: the
instance still commits submits, which run once RabbitMQ is back."""

from __future__ import annotations

import falcon
import pykka

from actors import TaskSystem
from actors.messages import QueueState

__all__ = ["Health"]


class Health:
    def __init__(self, system: TaskSystem) -> None:
        self._system = system

    def on_head(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The same status as GET, without the body: for load balancers that check with HEAD."""
        self.on_get(req, resp)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        problem, queue = self._check()
        pending, stalled = self._system.pending_submits
        if problem is not None or queue is None:
            resp.status = falcon.HTTP_503
            resp.media = {
                "status": "unavailable",
                "error": problem,
                "pending_submits": pending,
                "stalled_submits": stalled,
            }
            return
        resp.media = {
            "status": "ok",
            "schema_version": self._system.schema_version,
            "workers": queue.workers,
            "worker_restarts": queue.worker_restarts,
            "backlog": queue.unfinished,
            "ready": queue.ready,
            "in_flight": queue.in_flight,
            "paused": queue.paused,
            "pending_submits": pending,
            "stalled_submits": stalled,
        }
        if self._system.config.distributed:  # still 200 without RabbitMQ: submits are committed, run later
            resp.media["rabbitmq"] = "connected" if queue.broker_down is None else f"down: {queue.broker_down}"

    def _check(self) -> tuple[str | None, QueueState | None]:
        """Why the service cannot take and run tasks now (None if it can), and the queue's state."""
        system = self._system
        problem = system.problem() or (None if system.accepting else "shutting down") or system.reader.damage
        if problem is not None:
            return problem, None
        try:
            store = system.inspect_store()
        except (pykka.Timeout, pykka.ActorDeadError):
            return "the store does not answer (it may be waiting for another process's lock)", None
        if store.fault is not None:
            return store.fault, None
        try:
            return None, system.inspect()
        except (pykka.Timeout, pykka.ActorDeadError):
            return "the queue does not answer", None
