"""``GET /openapi.json``: the OpenAPI 3 description of this API, kept next to the code it describes.

The fuzz tests (``tests/api/test_fuzz.py``) check every response against it, so a change to
the API that is not made here too fails the tests.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import falcon

from actors.db import STATUSES
from actors.jsonvalues import MAX_DEPTH
from api.tasks import DEFAULT_LIMIT, DELAY_MS_RANGE, MAX_ACTION_LENGTH, MAX_KEY_LENGTH, MAX_LIMIT, PRIORITY_RANGE

__all__ = ["OpenApi", "openapi_document"]


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _ok(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response = _error(description, headers)
    response["content"]["application/json"]["schema"] = {"$ref": f"#/components/schemas/{schema}"}
    return response


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}}
NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "id": {
                "type": "string",
                "format": "uuid",
                "description": "only on a 503 of POST /tasks whose task may have been stored: look it up before"
                " submitting again",
            },
        },
        "additionalProperties": False,
    },
    "Submission": {
        "type": "object",
        "required": ["action"],
        "properties": {
            "action": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ACTION_LENGTH,
                "pattern": r"\S",
                "description": "what to do: uppercase, sum, or any action registered by the service",
            },
            "data": {
                "type": "object",
                "nullable": True,
                "description": f"the action's input (default {{}}); integers within the signed 64-bit range,"
                f" nested at most {MAX_DEPTH} levels",
            },
            "priority": {
                "type": "integer",
                "minimum": PRIORITY_RANGE.start,
                "maximum": PRIORITY_RANGE.stop - 1,
                "default": 0,
                "nullable": True,
                "description": "higher runs first among ready tasks; equal priorities run in the order submitted",
            },
            "delay_ms": {
                "type": "integer",
                "minimum": 0,
                "maximum": DELAY_MS_RANGE.stop - 1,
                "nullable": True,
                "description": "do not run it before this many milliseconds from now (not with run_at)",
            },
            "run_at": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "do not run it before this time, within a year (ISO 8601; no offset means UTC;"
                " not with delay_ms)",
            },
        },
        "additionalProperties": False,
    },
    "Accepted": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {"id": {"type": "string", "format": "uuid"}, "status": {"type": "string", "enum": ["queued"]}},
        "additionalProperties": False,
    },
    "Task": {
        "type": "object",
        "required": [
            "id",
            "action",
            "data",
            "status",
            "result",
            "error",
            "errors",
            "attempts",
            "priority",
            "run_at",
            "created_at",
            "started_at",
            "processed_at",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "action": {"type": "string"},
            "data": {"type": "object", "nullable": True, "description": "null only if unreadable"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "result": {"type": "object", "nullable": True},
            "error": {"type": "string", "nullable": True, "description": "the last attempt's error"},
            "errors": {
                "type": "array",
                "description": "every failed attempt's error, oldest first",
                "items": {
                    "type": "object",
                    "required": ["attempt", "error", "failed_at"],
                    "properties": {
                        "attempt": {"type": "integer", "minimum": 0},
                        "error": {"type": "string"},
                        "failed_at": {"type": "string", "format": "date-time"},
                    },
                    "additionalProperties": False,
                },
            },
            "attempts": {"type": "integer", "minimum": 0},
            "priority": {"type": "integer"},
            "run_at": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "when it is due to run (queued), or was last due",
            },
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": NULLABLE_TIME,
            "processed_at": NULLABLE_TIME,
            "unreadable": {
                "type": "string",
                "description": "present only when a stored value cannot be shown (a damaged row): which, and why",
            },
        },
        "additionalProperties": False,
    },
    "TaskList": {
        "type": "object",
        "required": ["tasks", "count", "next_cursor"],
        "properties": {
            "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
            "count": {"type": "integer", "minimum": 0},
            "next_cursor": {"type": "string", "nullable": True, "description": "pass as `cursor` for the next page"},
        },
        "additionalProperties": False,
    },
    "TaskStatus": {
        "type": "object",
        "required": ["id", "status"],
        "properties": {"id": {"type": "string"}, "status": {"type": "string", "enum": list(STATUSES)}},
        "additionalProperties": False,
    },
    "BulkResult": {
        "type": "object",
        "required": ["count", "dry_run"],
        "properties": {
            "count": {"type": "integer", "minimum": 0, "description": "tasks the request changed (or would)"},
            "dry_run": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    "StatusCounts": {
        "type": "object",
        "required": list(STATUSES),
        "properties": {status: {"type": "integer", "minimum": 0} for status in STATUSES},
    },
    "Stats": {
        "type": "object",
        "required": [
            "counts",
            "actions",
            "ready",
            "delayed",
            "in_flight",
            "oldest_ready_age_s",
            "throughput",
            "paused",
            "workers",
        ],
        "properties": {
            "counts": {"$ref": "#/components/schemas/StatusCounts"},
            "actions": {
                "type": "object",
                "description": "counts per status of each action (the first 1,000 by name)",
                "additionalProperties": {"$ref": "#/components/schemas/StatusCounts"},
            },
            "ready": {"type": "integer", "description": "queued and due: waiting for a worker"},
            "delayed": {"type": "integer", "description": "queued, not due yet (delay_ms, run_at, retry backoff)"},
            "in_flight": {"type": "integer", "description": "handed to workers, not answered yet"},
            "oldest_ready_age_s": {
                "type": "number",
                "nullable": True,
                "description": "how long the task due first has waited (null: none is waiting)",
            },
            "throughput": {
                "type": "object",
                "required": ["last_minute", "last_hour", "per_minute"],
                "description": "tasks finished (completed or failed) since start-up, within the last hour",
                "properties": {
                    "last_minute": {"type": "integer"},
                    "last_hour": {"type": "integer"},
                    "per_minute": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "minItems": 60,
                        "maxItems": 60,
                        "description": "each of the last 60 minutes, oldest first",
                    },
                },
                "additionalProperties": False,
            },
            "paused": {"type": "boolean"},
            "workers": {"type": "integer"},
        },
        "additionalProperties": False,
    },
    "Paused": {
        "type": "object",
        "required": ["paused"],
        "properties": {"paused": {"type": "boolean"}},
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "schema_version": {"type": "integer"},
            "workers": {"type": "integer"},
            "worker_restarts": {"type": "integer"},
            "backlog": {"type": "integer"},
            "ready": {"type": "integer"},
            "in_flight": {"type": "integer"},
            "paused": {"type": "boolean", "description": "dispatching no new task (POST /queue/pause)"},
            "pending_submits": {"type": "integer"},
            "stalled_submits": {"type": "integer"},
            "rabbitmq": {
                "type": "string",
                "description": "distributed mode only: 'connected', or 'down: ' and why (submits are still committed)",
            },
        },
    },
    "Unavailable": {
        "type": "object",
        "required": ["status", "error"],
        "properties": {
            "status": {"type": "string", "enum": ["unavailable"]},
            "error": {"type": "string", "description": "why"},
            "pending_submits": {"type": "integer"},
            "stalled_submits": {"type": "integer"},
        },
    },
}


def package_version() -> str:
    """The installed package's version (setup.py), or "unknown" when run from a tree that is not installed."""
    try:
        return importlib.metadata.version("task-queue")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
FILTERS: list[dict[str, Any]] = [
    {
        "name": "status",
        "in": "query",
        "description": "any of these statuses (repeat it, or separate them with commas)",
        "style": "form",
        "explode": True,
        "schema": {"type": "array", "items": {"type": "string", "enum": list(STATUSES)}},
    },
    {"name": "action", "in": "query", "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ACTION_LENGTH}},
    {
        "name": "created_after",
        "in": "query",
        "description": "created at or after this time (ISO 8601; no offset means UTC)",
        "schema": {"type": "string", "format": "date-time"},
    },
    {
        "name": "created_before",
        "in": "query",
        "description": "created before this time",
        "schema": {"type": "string", "format": "date-time"},
    },
]


def _bulk(verb: str, statuses: str) -> dict[str, Any]:
    return {
        "summary": f"{verb} every {statuses} task the filter matches (the filter of GET /tasks)",
        "operationId": f"{verb.lower()}Matching",
        "parameters": [
            *FILTERS,
            {
                "name": "dry_run",
                "in": "query",
                "description": "only count the tasks it would change",
                "schema": {"type": "boolean", "default": False},
            },
        ],
        "responses": {
            "200": _ok("how many tasks it changed (or would)", "BulkResult"),
            "400": _error(f"a parameter is invalid, or a status other than {statuses}"),
            "503": _error("stopping, the store cannot write, or no answer in time", RETRY_AFTER),
        },
    }


def _control_refusals(conflict: str) -> dict[str, Any]:
    return {
        "404": _error("no such task"),
        "409": _error(conflict),
        "503": _error("stopping, the store cannot write, or no answer in time", RETRY_AFTER),
    }


def openapi_document(auth: bool) -> dict[str, Any]:
    """The API's description; with ``auth``, every operation but /health needs a bearer token."""
    unauthorized: dict[str, Any] = {"401": _error("no valid bearer token")} if auth else {}
    secured: dict[str, Any] = {"security": [{"bearer": []}]} if auth else {}
    paths: dict[str, Any] = {
        "/tasks": {
            "post": {
                "summary": "Submit a task; 202 once it is committed",
                "operationId": "submitTask",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "description": "the same key with the same request within store.idempotency_window_s"
                        " (24 h) gives the same task, stored once",
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Submission"}}},
                },
                "responses": {
                    "202": _ok(
                        "committed; it will run",
                        "Accepted",
                        {
                            "Location": {"description": "the task's URL", "schema": {"type": "string"}},
                            "Idempotent-Replayed": {
                                "description": "true when an earlier submit with the same key gave this task",
                                "schema": {"type": "string"},
                            },
                        },
                    ),
                    "400": _error("the body is not valid JSON, or not a valid submission, or a malformed key"),
                    "413": _error("the body is too large"),
                    "415": _error("the body is not declared as application/json"),
                    "422": _error("the Idempotency-Key was used with a different request"),
                    "503": _error(
                        "not committed: shutting down, overloaded or the store is failing; with an `id` (and a"
                        " Location), the store took the task but did not confirm it in time: look it up",
                        RETRY_AFTER,
                    ),
                    **unauthorized,
                },
                **secured,
            },
            "get": {
                "summary": "List tasks, newest first",
                "operationId": "listTasks",
                "parameters": [
                    *FILTERS,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "the next_cursor of the previous page",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _ok("a page of tasks", "TaskList"),
                    "400": _error("a parameter is invalid"),
                    "503": _error("the database cannot be read", RETRY_AFTER),
                    **unauthorized,
                },
                **secured,
            },
        },
        "/tasks/{task_id}": {
            "get": {
                "summary": "One task",
                "operationId": "getTask",
                "parameters": [TASK_ID],
                "responses": {
                    "200": _ok("the task", "Task"),
                    "404": _error("no such task"),
                    "503": _error("the database cannot be read", RETRY_AFTER),
                    **unauthorized,
                },
                **secured,
            },
            "delete": {
                "summary": "Delete a finished (completed, failed or cancelled) task and its errors",
                "operationId": "deleteTask",
                "parameters": [TASK_ID],
                "responses": {
                    "204": {"description": "deleted"},
                    **_control_refusals("the task is not finished"),
                    **unauthorized,
                },
                **secured,
            },
        },
        "/tasks/{task_id}/cancel": {
            "post": {
                "summary": "Cancel a queued task (it never runs) or interrupt a running one; it ends cancelled",
                "operationId": "cancelTask",
                "parameters": [TASK_ID],
                "responses": {
                    "200": _ok("cancelled", "TaskStatus"),
                    **_control_refusals("the task has finished"),
                    **unauthorized,
                },
                **secured,
            }
        },
        "/tasks/{task_id}/retry": {
            "post": {
                "summary": "Queue a failed or cancelled task again, as a new series of attempts",
                "operationId": "retryTask",
                "parameters": [TASK_ID],
                "responses": {
                    "200": _ok("queued again", "TaskStatus"),
                    **_control_refusals("the task is neither failed nor cancelled"),
                    **unauthorized,
                },
                **secured,
            }
        },
        "/tasks/bulk/retry": {"post": {**_bulk("Retry", "failed or cancelled"), **secured}},
        "/tasks/bulk/cancel": {"post": {**_bulk("Cancel", "queued or running"), **secured}},
        "/stats": {
            "get": {
                "summary": "Counts per status and action, queue depth, throughput; never a count of the tasks table",
                "operationId": "stats",
                "responses": {
                    "200": _ok("the numbers", "Stats"),
                    "503": _error("the database cannot be read, or the queue does not answer", RETRY_AFTER),
                    **unauthorized,
                },
                **secured,
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics, in its text format (metrics.enabled)",
                "operationId": "metrics",
                "responses": {
                    "200": {"description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "404": _error("metrics are turned off"),
                    "503": _error("the database cannot be read, or the queue does not answer", RETRY_AFTER),
                    **unauthorized,
                },
                **secured,
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard: a page that reads this API (it asks for the token itself)",
                "operationId": "dashboard",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/dashboard/{name}": {
            "get": {
                "summary": "The dashboard's script and style sheet",
                "operationId": "dashboardFile",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _error("no such file"),
                },
            }
        },
        "/queue/pause": {
            "post": {
                "summary": "Start no new task (submits are still accepted and committed); kept across restarts",
                "operationId": "pauseQueue",
                "responses": {"200": _ok("paused", "Paused"), "503": _error("stopping", RETRY_AFTER), **unauthorized},
                **secured,
            }
        },
        "/queue/resume": {
            "post": {
                "summary": "Start tasks again",
                "operationId": "resumeQueue",
                "responses": {"200": _ok("resumed", "Paused"), "503": _error("stopping", RETRY_AFTER), **unauthorized},
                **secured,
            }
        },
        "/health": {
            "get": {
                "summary": "Whether the service can take and run tasks",
                "operationId": "health",
                "responses": {
                    "200": _ok("ready", "Health"),
                    "503": {
                        "description": "not ready",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Unavailable"}}},
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {"description": "OpenAPI 3 document", "content": {"application/json": {"schema": {}}}},
                    **unauthorized,
                },
                **secured,
            }
        },
    }
    components: dict[str, Any] = {"schemas": SCHEMAS}
    if auth:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "task-queue", "version": package_version(), "description": "A durable task queue."},
        "paths": paths,
        "components": components,
    }


class OpenApi:
    def __init__(self, auth: bool) -> None:
        self._document = openapi_document(auth)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._document
