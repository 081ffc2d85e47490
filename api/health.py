"""``GET /health``: 200 once the schema is migrated and every actor is alive, else 503."""

from __future__ import annotations

import falcon

from actors import TaskSystem

__all__ = ["Health"]


class Health:
    def __init__(self, system: TaskSystem) -> None:
        self._system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        problem = self._system.problem() or (None if self._system.accepting else "shutting down")
        if problem is None:
            resp.media = {
                "status": "ok",
                "schema_version": self._system.schema_version,
                "workers": len(self._system.workers),
            }
        else:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "error": problem}
