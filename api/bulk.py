"""``POST /tasks/bulk/retry`` and ``/tasks/bulk/cancel``: a control request on every task a filter
matches, the same filter as ``GET /tasks`` takes; ``dry_run=true`` only counts them."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import falcon

from actors import NotAccepted, TaskSystem
from actors.db import TaskFilter
from actors.tasklog import one_line
from api.control import RETRY_AFTER_S
from api.tasks import parse_filter, readable

__all__ = ["BulkAction", "bulk_actions"]

logger = logging.getLogger("task_queue.bulk")


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
        _no_paging_nor_body(req)
        filters = parse_filter(req)
        if any(status not in self._statuses for status in filters.statuses):
            raise falcon.HTTPBadRequest(
                description=f"only {' or '.join(self._statuses)} tasks can be {self._name}; status must be one of them"
            )
        filters = dataclasses.replace(filters, statuses=filters.statuses or self._statuses)
        dry_run = _dry_run(req.get_param_as_list("dry_run"))
        if dry_run:
            with readable():
                count = self._system.reader.count(filters)
        else:
            try:
                count = self._request(filters)
            except NotAccepted as e:
                raise falcon.HTTPServiceUnavailable(description=str(e), retry_after=RETRY_AFTER_S) from None
            logger.info("bulk: %d tasks %s (%s)", count, self._name, one_line(req.query_string) or "no filter")
        resp.media = {"count": count, "dry_run": dry_run}


def _no_paging_nor_body(req: falcon.Request) -> None:
    """A bulk request applies to every task its filter matches: a page or a body would be a mistake."""
    for name in ("limit", "cursor"):
        if req.get_param(name) is not None:
            raise falcon.HTTPBadRequest(description=f"{name}: a bulk request applies to every task that matches")
    if req.content_length or req.get_header("Transfer-Encoding"):
        raise falcon.HTTPBadRequest(description="the filter goes in the query string, as for GET /tasks; send no body")


def _dry_run(values: list[str] | None) -> bool:
    if values is not None and (len(values) != 1 or values[0] not in ("true", "false")):
        raise falcon.HTTPBadRequest(description="dry_run must be given once, true or false")
    return values == ["true"]


def bulk_actions(system: TaskSystem) -> dict[str, BulkAction]:
    """The routes of the bulk actions, by path."""
    return {
        "/tasks/bulk/retry": BulkAction(system, "retried", ("failed", "cancelled"), system.retry_matching),
        "/tasks/bulk/cancel": BulkAction(system, "cancelled", ("queued", "running"), system.cancel_matching),
    }
