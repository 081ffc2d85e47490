"""``/tasks`` (submit, list) and ``/tasks/{id}`` (one task)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import falcon
import orjson

from actors import NotAccepted, TaskSystem
from actors.db import STATUSES, TaskFilter, utc_now
from actors.jsonvalues import INT_MAX, NotStorable, check_storable, loads_exact
from actors.messages import NewTask
from actors.reader import Cursor, Unreadable
from actors.store import IdempotencyConflict
from api.control import RETRY_AFTER_S, answer_control

__all__ = ["TaskCollection", "TaskItem"]

MAX_ACTION_LENGTH = 200
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR_LENGTH = 200
MAX_KEY_LENGTH = 255
PRIORITY_RANGE = range(-(2**31), 2**31)  # a 32-bit integer, as PostgreSQL's integer
DELAY_MS_RANGE = range(0, 366 * 24 * 3600 * 1000 + 1)  # up to a year
SUBMISSION_FIELDS = frozenset({"action", "data", "priority", "delay_ms", "run_at"})
TIME_FORMAT = "{name} must be an ISO 8601 time, such as 2026-12-01T15:00:00Z"


class TaskCollection:
    """``POST /tasks`` accepts a task once it is committed; ``GET /tasks`` lists them."""

    def __init__(self, system: TaskSystem) -> None:
        self._system = system
        self._max_body_bytes = system.config.server.max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        task = parse_submission(self._read_json(req), _idempotency_key(req))
        try:
            earlier = self._system.submit(task)
        except IdempotencyConflict:
            raise falcon.HTTPUnprocessableEntity(
                description="this Idempotency-Key was used with a different request; use a new key for a new task"
            ) from None
        except NotAccepted as e:
            if not e.maybe_stored:
                raise falcon.HTTPServiceUnavailable(description=str(e), retry_after=RETRY_AFTER_S) from None
            if task.idempotency_key is not None:  # the task may be an earlier one: submitting again tells
                raise falcon.HTTPServiceUnavailable(
                    description="the store took the task but did not confirm its commit in time:"
                    " submit it again with the same Idempotency-Key",
                    retry_after=RETRY_AFTER_S,
                ) from None
            # The outcome is unknown: give the id, so the client looks the task up instead of resubmitting.
            resp.status = falcon.HTTP_503
            resp.retry_after = RETRY_AFTER_S
            resp.location = f"/tasks/{task.id}"
            resp.media = {"error": str(e), "id": task.id}
            return
        task_id = task.id
        if earlier is not None:  # the same key and request as before: the same answer, nothing new stored
            task_id = earlier
            resp.set_header("Idempotent-Replayed", "true")
        resp.status = falcon.HTTP_202
        resp.location = f"/tasks/{task_id}"
        resp.media = {"id": task_id, "status": "queued"}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        filters = parse_filter(req)
        limit = _parse_limit(req.get_param("limit"))
        after = _decode_cursor(req.get_param("cursor"))
        with readable():
            tasks, next_cursor = self._system.reader.list(filters, limit, after)
        resp.media = {
            "tasks": tasks,
            "count": len(tasks),
            "next_cursor": None if next_cursor is None else _encode_cursor(next_cursor),
        }

    def _read_json(self, req: falcon.Request) -> Any:
        if (req.content_length or 0) > self._max_body_bytes:
            raise _too_large(self._max_body_bytes)
        if req.content_type is None or req.content_type.split(";")[0].strip().lower() != falcon.MEDIA_JSON:
            raise falcon.HTTPUnsupportedMediaType(description="Content-Type must be application/json")
        body = req.bounded_stream.read(self._max_body_bytes + 1)
        if len(body) > self._max_body_bytes:
            raise _too_large(self._max_body_bytes)
        try:
            return loads_exact(body)
        except orjson.JSONDecodeError as e:
            raise falcon.HTTPBadRequest(description=f"invalid JSON: {e}") from None
        except NotStorable as e:
            raise falcon.HTTPBadRequest(description=str(e)) from None


class TaskItem:
    """``GET /tasks/{id}``; ``DELETE /tasks/{id}`` for a finished task."""

    def __init__(self, system: TaskSystem) -> None:
        self._system = system

    def on_delete(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        answer_control(
            resp,
            task_id,
            self._system.delete,
            "the task is {status}: only a completed, failed or cancelled task can be deleted; cancel it first",
        )
        resp.status = falcon.HTTP_204
        resp.media = None

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        with readable():
            task = self._system.reader.get(task_id)
        if task is None:
            raise falcon.HTTPNotFound(description="task not found")
        resp.media = task


def _idempotency_key(req: falcon.Request) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 255 printable ASCII characters (quotes around it are dropped)."""
    key = req.get_header("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise falcon.HTTPBadRequest(
            description=f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        )
    if len(key) >= 3 and key[0] == key[-1] == '"':  # the IETF draft sends it as a quoted string
        key = key[1:-1]
    return key


def parse_submission(document: Any, idempotency_key: str | None = None) -> NewTask:
    """Check a submitted ``{"action", "data"}`` document; raise 400 with the reason if it is wrong."""
    if not isinstance(document, dict):
        raise falcon.HTTPBadRequest(description="action required: the body must be a JSON object")
    unknown = sorted(set(document) - SUBMISSION_FIELDS)
    if unknown:  # a misspelled delay_ms or priority would be ignored, and the task run at once
        raise falcon.HTTPBadRequest(
            description=f"unknown field {unknown[0][:50]!r}: a task has {', '.join(sorted(SUBMISSION_FIELDS))}"
        )
    action = document.get("action")
    if not isinstance(action, str) or not action.strip():
        raise falcon.HTTPBadRequest(description="action required: a non-empty string")
    if len(action) > MAX_ACTION_LENGTH:
        raise falcon.HTTPBadRequest(description=f"action must be at most {MAX_ACTION_LENGTH} characters")
    data = document.get("data")
    if data is None:  # missing or null: no input, as in the tutorial
        data = {}
    if not isinstance(data, dict):
        raise falcon.HTTPBadRequest(description="data must be a JSON object")
    try:
        check_storable(data, "data")
    except NotStorable as e:
        raise falcon.HTTPBadRequest(description=str(e)) from None
    priority = _whole_number(document, "priority", PRIORITY_RANGE) or 0
    run_at = _run_at(document)
    payload = orjson.dumps(data).decode()
    digest = None
    if idempotency_key is not None:
        # The request as sent (a delay_ms sent again is the same request), in the form keys recorded
        # before priorities and delays existed were hashed in: a default is the same as none.
        request = {"action": action, "data": data}
        request |= {key: document[key] for key in ("priority", "delay_ms", "run_at") if document.get(key) is not None}
        if request.get("priority") == 0:
            del request["priority"]
        digest = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return NewTask(str(uuid.uuid4()), action, payload, utc_now(), idempotency_key, digest, priority, run_at)


def _whole_number(document: dict[str, Any], name: str, allowed: range) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
        raise falcon.HTTPBadRequest(
            description=f"{name} must be a whole number from {allowed.start} to {allowed.stop - 1}"
        )
    return value


def _run_at(document: dict[str, Any]) -> float | None:
    """When the task may run, from ``delay_ms`` (from now) or ``run_at`` (a time), as epoch seconds."""
    delay_ms = _whole_number(document, "delay_ms", DELAY_MS_RANGE)
    raw = document.get("run_at")
    if raw is None:
        return None if delay_ms is None else time.time() + delay_ms / 1000
    if delay_ms is not None:
        raise falcon.HTTPBadRequest(description="give delay_ms or run_at, not both")
    moment = _parse_moment(raw) if isinstance(raw, str) else None
    if moment is None:
        raise falcon.HTTPBadRequest(description=TIME_FORMAT.format(name="run_at"))
    run_at = moment.timestamp()
    if run_at > time.time() + DELAY_MS_RANGE.stop / 1000:
        raise falcon.HTTPBadRequest(description="run_at must be within a year from now")
    return run_at


def parse_filter(req: falcon.Request) -> TaskFilter:
    """``status`` (repeated, or comma-separated), ``action``, ``created_after`` and ``created_before``."""
    statuses = tuple(dict.fromkeys(s for value in req.get_param_as_list("status") or [] for s in value.split(",")))
    if any(status not in STATUSES for status in statuses):
        raise falcon.HTTPBadRequest(description=f"status must be one of {', '.join(STATUSES)}")
    action = req.get_param("action")
    if action is not None and not 0 < len(action) <= MAX_ACTION_LENGTH:
        raise falcon.HTTPBadRequest(description=f"action must be 1 to {MAX_ACTION_LENGTH} characters")
    return TaskFilter(statuses, action, _parse_time(req, "created_after"), _parse_time(req, "created_before"))


def _parse_time(req: falcon.Request, name: str) -> str | None:
    """A time parameter, in the form times are stored in."""
    raw = req.get_param(name)
    if raw is None:
        return None
    moment = _parse_moment(raw)
    if moment is None:
        raise falcon.HTTPBadRequest(description=TIME_FORMAT.format(name=name))
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_moment(raw: str) -> datetime.datetime | None:
    """An ISO 8601 time (``2026-12-01T15:00:00Z``, or with an offset; without one, or a date alone, UTC),
    in UTC; None if it is not one."""
    try:
        moment = datetime.datetime.fromisoformat(raw)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        return None


@contextlib.contextmanager
def readable() -> Iterator[None]:
    """Answer 503 with the reason when the database cannot be read (damaged, or gone)."""
    try:
        yield
    except Unreadable as e:
        raise falcon.HTTPServiceUnavailable(description=str(e), retry_after=RETRY_AFTER_S) from None


def _too_large(limit: int) -> falcon.HTTPError:
    return falcon.HTTPContentTooLarge(description=f"body larger than {limit} bytes")


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise falcon.HTTPBadRequest(description=f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def _encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(cursor)).decode().rstrip("=")


def _decode_cursor(raw: str | None) -> Cursor | None:
    if raw is None:
        return None
    try:
        if len(raw) <= MAX_CURSOR_LENGTH:
            created_at, seq = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            if isinstance(created_at, str) and len(created_at) <= 40 and isinstance(seq, int) and 0 <= seq <= INT_MAX:
                return created_at, seq
    except (binascii.Error, ValueError, TypeError):
        pass
    raise falcon.HTTPBadRequest(description="cursor is not one this API returned")
