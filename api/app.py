"""``create_app``: wires the resources to a running :class:`~actors.TaskSystem`.

Shared by ``run.py`` and the tests; it starts nothing itself.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.media
import orjson

from actors import TaskSystem
from api.auth import BearerAuth
from api.bulk import bulk_actions
from api.control import QueuePause, cancel_and_retry
from api.dashboard import DashboardFile, DashboardPage
from api.errors import install_error_handling
from api.health import Health
from api.logs import RequestLog
from api.metrics import PrometheusMetrics
from api.openapi import OpenApi
from api.stats import Stats
from api.tasks import TaskCollection, TaskItem

__all__ = ["create_app"]


def create_app(system: TaskSystem) -> falcon.App:
    token = system.config.server.auth_token
    middleware: list[Any] = [RequestLog()] if system.config.log.requests else []
    if token:
        middleware.append(BearerAuth(token))
    app = falcon.App(media_type=falcon.MEDIA_JSON, middleware=middleware)
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.req_options.strip_url_path_trailing_slash = True
    install_error_handling(app)

    app.add_route("/tasks", TaskCollection(system))
    app.add_route("/tasks/{task_id}", TaskItem(system))
    for path, resource in {**cancel_and_retry(system), **bulk_actions(system)}.items():
        app.add_route(path, resource)
    app.add_route("/queue/pause", QueuePause(system, paused=True))
    app.add_route("/queue/resume", QueuePause(system, paused=False))
    app.add_route("/health", Health(system))
    app.add_route("/stats", Stats(system))
    if system.metrics is not None:
        app.add_route("/metrics", PrometheusMetrics(system, system.metrics))
    app.add_route("/openapi.json", OpenApi(auth=bool(token)))
    app.add_route("/", DashboardPage())
    app.add_route("/dashboard/{name}", DashboardFile())
    return app
