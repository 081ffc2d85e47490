"""Logging: the process's log format (text or JSON lines) and the optional request log.

JSON lines carry the message and, for a task's line, its fields as they are (see
``actors/tasklog.py``), for a log pipeline to index without parsing text.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Any, TextIO

import falcon
import orjson

from actors.tasklog import one_line
from conf import LogConfig

__all__ = ["BufferedLines", "JsonLines", "RequestLog", "TextLines", "configure_logging"]

FLUSH_S = 0.2  # INFO lines reach the log at most this late
STDERR_BUFFER = 64 * 1024
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


class TextLines(logging.Formatter):
    """``TEXT_FORMAT``, written without the %-style machinery and with each second formatted once:
    a line is logged for every finished task."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second = (second, text)
        line = f"{text},{int(record.msecs):03d} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class BufferedLines(logging.StreamHandler):
    """Writes log lines through a buffer that is flushed at once for a WARNING or worse, and
    otherwise at most ``FLUSH_S`` later, by a thread of its own.

    A line is logged for every finished task, on the queue actor's thread: flushing each one
    (a system call, and a switch of threads) added a fifth to what the actors spend per task
    (``python -m bench.actors_only``). The price: after a ``SIGKILL``, the last ``FLUSH_S`` of
    INFO lines may be lost; a clean stop flushes them (``logging.shutdown``)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._unflushed = False
        threading.Thread(target=self._flush_now_and_then, name="log-flusher", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.stream.flush()
            else:
                self._unflushed = True
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 -- as logging's own handlers do
            self.handleError(record)

    def _flush_now_and_then(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            if self._unflushed:
                with self.lock or contextlib.nullcontext():
                    self._unflushed = False
                    self.flush()


def configure_logging(config: LogConfig, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr) at the configured level and format (once, at start-up).

    Records skip what no line shows (the caller's file and line, found by walking the stack; the
    thread and process names), as the logging cookbook suggests for speed: a line is written for
    every finished task."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if stream is None:  # stderr, but with a buffer of its own: Python's flushes every line
        stream = open(sys.stderr.fileno(), "w", buffering=STDERR_BUFFER, closefd=False)  # noqa: SIM115
    handler = BufferedLines(stream)
    if config.format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(TextLines())
    logging.basicConfig(level=config.level.upper(), handlers=[handler], force=True)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # its every step; the link logs what matters
    logging.getLogger("pykka").setLevel(logging.WARNING)  # (an ask's failure, with its traceback: start-up says it)


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
