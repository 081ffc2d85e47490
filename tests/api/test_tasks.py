from __future__ import annotations

import uuid
from typing import Any

import pytest
from falcon import testing

from actors.actions import registry
from tests.helpers import wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")

JSON = {"Content-Type": "application/json"}
FIELDS = {
    "id", "action", "data", "status", "result", "error", "errors", "attempts", "created_at", "started_at",
    "processed_at", "priority", "run_at",
}  # fmt: skip


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"server": {"max_body_bytes": 4096, "submit_timeout_ms": 1000}}


def post(client: testing.TestClient, body: object) -> testing.Result:
    return client.simulate_post("/tasks", json=body)


def completed(client: testing.TestClient, task_id: str) -> dict:
    def done() -> dict | None:
        task = client.simulate_get(f"/tasks/{task_id}").json
        return task if task["status"] in ("completed", "failed") else None

    return wait_until(done, what=f"task {task_id} to finish")


def assert_error(result: testing.Result, status: int, contains: str = "") -> None:
    assert result.status_code == status, result.text
    assert result.headers["content-type"].startswith("application/json")
    assert set(result.json) == {"error"}
    assert contains in result.json["error"]


def test_a_submitted_task_is_committed_before_the_202(client, task_row):
    result = post(client, {"action": "uppercase", "data": {"text": "hello"}})

    assert result.status_code == 202
    assert result.json["status"] == "queued"
    task_id = result.json["id"]
    assert result.headers["location"] == f"/tasks/{task_id}"
    assert task_row(task_id) is not None


@pytest.mark.parametrize(
    ("body", "output"),
    [
        ({"action": "uppercase", "data": {"text": "hello"}}, "HELLO"),
        ({"action": "sum", "data": {"numbers": [1, 2, 3]}}, 6),
        ({"action": "resize_image"}, "processed"),
    ],
)
def test_the_tutorial_tasks_complete_with_their_results(client, body, output):
    task_id = post(client, body).json["id"]

    task = completed(client, task_id)

    assert set(task) == FIELDS
    assert task["status"] == "completed"
    assert task["result"] == {"output": output}
    assert task["data"] == body.get("data", {})
    assert (task["error"], task["attempts"]) == (None, 1)
    assert task["created_at"] <= task["started_at"] <= task["processed_at"]


def test_a_task_with_unusable_data_fails_with_a_clear_error(client):
    task_id = post(client, {"action": "sum", "data": {"numbers": "1,2"}}).json["id"]

    task = completed(client, task_id)

    assert (task["status"], task["result"]) == ("failed", None)
    assert task["error"] == "sum needs data.numbers, a list of numbers"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "invalid JSON"),
        (b"", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b'{"action": NaN}', "invalid JSON"),
        (b"[]", "action required"),
        (b'"uppercase"', "action required"),
        (b"{}", "action required"),
        (b'{"action": ""}', "action required"),
        (b'{"action": "   "}', "action required"),
        (b'{"action": 5}', "action required"),
        (b'{"action": null}', "action required"),
        (b'{"action": "' + b"a" * 201 + b'"}', "at most 200"),
        (b'{"action": "sum", "data": [1, 2]}', "data must be a JSON object"),
        (b'{"action": "sum", "data": "x"}', "data must be a JSON object"),
        (b'{"action": "x", "data": ' + b'{"a": ' * 300 + b"1" + b"}" * 301, "nested more than 32 levels"),
        (b"[" * 2000 + b"]" * 2000, "invalid JSON"),
        (b'{"action": "x", "delay": 5000}', "unknown field 'delay': a task has action, data, delay_ms"),
        (b'{"action": "x", "prio": 5}', "unknown field 'prio'"),
    ],
)
def test_a_bad_submission_is_a_400_with_a_json_error(client, system, body, message):
    result = client.simulate_post("/tasks", body=body, headers=JSON)

    assert_error(result, 400, message)
    assert system.reader.list()[0] == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_a_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}

    result = client.simulate_post("/tasks", body=b'{"action": "sum"}', headers=headers)

    assert_error(result, 415, "application/json")


def test_json_with_a_charset_is_accepted(client):
    headers = {"Content-Type": "application/json; charset=utf-8"}

    assert client.simulate_post("/tasks", body=b'{"action": "x"}', headers=headers).status_code == 202


def test_a_body_over_the_limit_is_a_413(client):
    result = post(client, {"action": "x", "data": {"blob": "a" * 5000}})

    assert_error(result, 413, "4096")


def test_a_submit_while_shutting_down_is_a_503_with_retry_after(client, system):
    system.accepting = False

    result = post(client, {"action": "x"})

    assert_error(result, 503, "shutting down")
    assert result.headers["retry-after"] == "1"


def test_a_submit_the_store_cannot_commit_is_a_503_not_a_202(client, system):
    system.store.stop(timeout=10)

    result = post(client, {"action": "x"})

    assert_error(result, 503)
    assert "retry-after" in result.headers


def test_the_list_is_newest_first_with_a_count(client):
    ids = [post(client, {"action": f"a{n}"}).json["id"] for n in range(3)]

    result = client.simulate_get("/tasks")

    assert result.status_code == 200
    assert [t["id"] for t in result.json["tasks"]] == ids[::-1]
    assert result.json["count"] == 3
    assert result.json["next_cursor"] is None


def test_the_list_holds_100_tasks_unless_asked_for_more(client):
    for n in range(101):
        post(client, {"action": f"a{n}"})

    default = client.simulate_get("/tasks").json
    larger = client.simulate_get("/tasks", params={"limit": "500"}).json

    assert default["count"] == 100
    assert default["next_cursor"] is not None
    assert larger["count"] == 101
    assert larger["next_cursor"] is None


def test_the_list_filters_by_status(client):
    ok = post(client, {"action": "uppercase", "data": {"text": "a"}}).json["id"]
    bad = post(client, {"action": "sum", "data": {"numbers": "x"}}).json["id"]
    completed(client, ok)
    completed(client, bad)

    done = client.simulate_get("/tasks", params={"status": "completed"}).json
    failed = client.simulate_get("/tasks", params={"status": "failed"}).json
    queued = client.simulate_get("/tasks", params={"status": "queued"}).json

    assert [t["id"] for t in done["tasks"]] == [ok]
    assert [t["id"] for t in failed["tasks"]] == [bad]
    assert queued == {"tasks": [], "count": 0, "next_cursor": None}


def test_the_list_pages_with_a_cursor(client):
    ids = [post(client, {"action": f"a{n}"}).json["id"] for n in range(5)]

    seen, cursor = [], None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = client.simulate_get("/tasks", params=params).json
        assert page["count"] == len(page["tasks"]) <= 2
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == ids[::-1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "done"}, "status must be one of queued, running, completed, failed"),
        ({"status": "' OR 1=1 --"}, "status must be one of"),
        ({"limit": "0"}, "limit must be"),
        ({"limit": "-1"}, "limit must be"),
        ({"limit": "1001"}, "limit must be"),
        ({"limit": str(10**9)}, "limit must be"),
        ({"limit": "ten"}, "limit must be"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WzFd"}, "cursor"),
    ],
)
def test_bad_list_parameters_are_a_400(client, params, message):
    assert_error(client.simulate_get("/tasks", params=params), 400, message)


def test_the_list_accepts_the_largest_limit(client):
    assert client.simulate_get("/tasks", params={"limit": "1000"}).status_code == 200


def test_an_unknown_task_is_a_404(client):
    assert_error(client.simulate_get("/tasks/no-such-task"), 404, "task not found")


def test_head_health_answers_the_status_without_a_body(client):
    result = client.simulate_head("/health")
    assert (result.status_code, result.content) == (200, b"")


def test_health_is_200_while_every_actor_runs(client, system, backend):
    if backend == "distributed":  # it says whether RabbitMQ is connected, which takes a moment at start
        wait_until(lambda: client.simulate_get("/health").json["rabbitmq"] == "connected", what="RabbitMQ")
    result = client.simulate_get("/health")

    assert result.status_code == 200
    assert result.json == ({"rabbitmq": "connected"} if backend == "distributed" else {}) | {
        "status": "ok",
        "schema_version": system.schema_version,
        "workers": 2,
        "worker_restarts": 0,
        "backlog": 0,
        "ready": 0,
        "in_flight": 0,
        "paused": False,
        "pending_submits": 0,
        "stalled_submits": 0,
    }


@pytest.mark.parametrize("actor", ["store", "queue"])
def test_health_is_503_when_the_store_or_the_queue_is_dead(client, system, actor):
    getattr(system, actor).stop(timeout=10)

    result = client.simulate_get("/health")

    assert result.status_code == 503
    assert (result.json["status"], result.json["error"]) == ("unavailable", f"the {actor} actor is not running")


def test_health_is_503_while_shutting_down(client, system):
    system.accepting = False

    health = client.simulate_get("/health").json
    assert (health["status"], health["error"]) == ("unavailable", "shutting down")


def test_unknown_routes_and_methods_answer_in_json(client):
    assert_error(client.simulate_get("/nope"), 404, "not found")
    assert_error(client.simulate_delete("/tasks"), 405, "method not allowed")
    assert_error(client.simulate_post("/tasks/abc"), 405, "method not allowed")


FLAKY_RUNS: dict[str, int] = {}


@registry.action("fails_twice")
def fails_twice(data: dict[str, Any]) -> dict[str, Any]:
    runs = FLAKY_RUNS[data["key"]] = FLAKY_RUNS.get(data["key"], 0) + 1
    if runs <= 2:
        raise RuntimeError(f"flaky run {runs}")
    return {"output": runs}


def test_every_failed_attempt_keeps_its_error_with_its_number_and_time(client):
    task_id = post(client, {"action": "fails_twice", "data": {"key": str(uuid.uuid4())}}).json["id"]

    task = completed(client, task_id)

    assert (task["status"], task["attempts"], task["error"]) == ("completed", 3, None)
    assert [(e["attempt"], e["error"]) for e in task["errors"]] == [
        (1, "RuntimeError: flaky run 1"),
        (2, "RuntimeError: flaky run 2"),
    ]
    assert all(task["created_at"] <= e["failed_at"] <= task["processed_at"] for e in task["errors"])
    listed = client.simulate_get("/tasks", params={"status": "completed"}).json["tasks"]
    assert [t["errors"] for t in listed if t["id"] == task_id] == [task["errors"]]


def test_the_list_filters_by_several_statuses_by_action_and_by_creation_time(client):
    client.simulate_post("/queue/pause")
    ids = {name: post(client, {"action": name}).json["id"] for name in ("first", "second", "third")}
    client.simulate_post(f"/tasks/{ids['first']}/cancel")
    middle = client.simulate_get(f"/tasks/{ids['second']}").json["created_at"]

    def listed(**params: str | list[str]) -> list[str]:
        result = client.simulate_get("/tasks", params=params)
        assert result.status_code == 200, result.text
        return [t["action"] for t in result.json["tasks"]]

    assert listed(status=["queued", "cancelled"]) == ["third", "second", "first"]
    assert listed(status="cancelled,failed") == ["first"]
    assert listed(action="second") == ["second"]
    assert listed(action="second", status="cancelled") == []
    assert listed(created_after=middle) == ["third", "second"]
    assert listed(created_before=middle) == ["first"]
    assert listed(created_after="2000-01-01", created_before="2000-01-02") == []
    assert listed(created_after=middle.replace("Z", "+00:00")) == ["third", "second"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "queued,done"}, "status must be one of"),
        ({"created_after": "yesterday"}, "created_after must be an ISO 8601 time"),
        ({"created_before": "0001-01-01T00:00:00+10:00"}, "created_before must be an ISO 8601 time"),
        ({"action": "x" * 201}, "action must be 1 to 200 characters"),
    ],
)
def test_a_bad_filter_is_a_400_with_the_reason(client, params, message):
    assert_error(client.simulate_get("/tasks", params=params), 400, message)
