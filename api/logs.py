"""Logging: the process's log format (text or JSON lines) and the optional request log.

JSON lines carry the message and, for a task's line, its fields as they are (see
``actors/tasklog.py``), for a log pipeline to index without parsing text.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import falcon
import orjson

from actors.tasklog import one_line
from conf import LogConfig

__all__ = ["JsonLines", "RequestLog", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
request_logger = logging.getLogger("task_queue.requests")


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's task or request fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for fields in ("task", "request"):
            line.update(getattr(record, fields, {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(config: LogConfig) -> None:
    """Log to stderr at the configured level and format (once, at start-up).

    Records skip what no line shows (the caller's file and line, found by walking the stack; the
    thread and process names), as the logging cookbook suggests for speed: a line is written for
    every finished task."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    if config.format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=config.level.upper(), handlers=[handler], force=True)


class RequestLog:
    """Falcon middleware (``log.requests``): a line per request, ``GET /tasks 200 1.2 ms``, at INFO."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        duration_ms = round((time.perf_counter() - req.context.started) * 1000, 3)
        status = resp.status_code
        fields = {"method": req.method, "path": req.path, "status": status, "duration_ms": duration_ms}
        path = one_line(req.path)
        request_logger.info("%s %s %d %.1f ms", req.method, path, status, duration_ms, extra={"request": fields})
