"""``GET /metrics``: the Prometheus text format, written by ``prometheus-client`` (``metrics.enabled``)."""

from __future__ import annotations

import falcon
import pykka
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from actors import TaskSystem
from actors.metrics import Metrics
from actors.reader import Unreadable
from api.control import RETRY_AFTER_S

__all__ = ["PrometheusMetrics"]


class PrometheusMetrics:
    def __init__(self, system: TaskSystem, metrics: Metrics) -> None:
        self._system = system
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            resp.data = generate_latest(self._metrics.registry)
        except (Unreadable, pykka.Timeout, pykka.ActorDeadError) as e:
            reason = str(e) if isinstance(e, Unreadable) else "the queue does not answer"
            raise falcon.HTTPServiceUnavailable(description=reason, retry_after=RETRY_AFTER_S) from None
        resp.content_type = CONTENT_TYPE_LATEST
