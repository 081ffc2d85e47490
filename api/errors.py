"""Every error leaves the API as JSON ``{"error": "..."}`` with the right status code."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import orjson

__all__ = ["install_error_handling"]

logger = logging.getLogger(__name__)


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Write ``error`` as JSON, whatever the client accepts: no HTML pages, no tracebacks."""
    message = error.description or error.title.split(" ", 1)[-1].lower()
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps({"error": message})


def handle_unexpected(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
    logger.exception("unexpected error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(description="internal error")


def install_error_handling(app: falcon.App) -> None:
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, handle_unexpected)
