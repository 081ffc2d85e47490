"""``POST /tasks/bulk/retry`` and ``/tasks/bulk/cancel``: a control request on every task a filter
matches, the same filter as ``GET /tasks`` takes; ``dry_run=true`` only counts them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import falcon

from actors import NotAccepted, TaskSystem
from actors.db import TaskFilter
from api.control import RETRY_AFTER_S
from api.tasks import parse_filter, readable

__all__ = ["BulkAction", "bulk_actions"]


class BulkAction:
    """Retry or cancel every task the query's filter matches among those in ``statuses``."""

    def __init__(
        self, system: TaskSystem, name: str, statuses: tuple[str, ...], request: Callable[[TaskFilter], int]
    ) -> None:
        self._system = system
        self._name = name
        self._statuses = statuses
        self._request = request

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        filters = parse_filter(req)
        if any(status not in self._statuses for status in filters.statuses):
            raise falcon.HTTPBadRequest(
                description=f"only {' or '.join(self._statuses)} tasks can be {self._name}; status must be one of them"
            )
        filters = dataclasses.replace(filters, statuses=filters.statuses or self._statuses)
        dry_run = _dry_run(req.get_param("dry_run"))
        if dry_run:
            with readable():
                count = self._system.reader.count(filters)
        else:
            try:
                count = self._request(filters)
            except NotAccepted as e:
                raise falcon.HTTPServiceUnavailable(description=str(e), retry_after=RETRY_AFTER_S) from None
        resp.media = {"count": count, "dry_run": dry_run}


def _dry_run(raw: str | None) -> bool:
    if raw not in (None, "true", "false"):
        raise falcon.HTTPBadRequest(description="dry_run must be true or false")
    return raw == "true"


def bulk_actions(system: TaskSystem) -> dict[str, BulkAction]:
    """The routes of the bulk actions, by path."""
    return {
        "/tasks/bulk/retry": BulkAction(system, "retried", ("failed", "cancelled"), system.retry_matching),
        "/tasks/bulk/cancel": BulkAction(system, "cancelled", ("queued", "running"), system.cancel_matching),
    }
