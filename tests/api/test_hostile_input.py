"""Property tests (hypothesis) and hostile cases for request parsing: never a 5xx, always a JSON error."""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson
import pytest
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.actions import InvalidTaskData, registry
from api.tasks import parse_submission
from tests.helpers import wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")

JSON = {"Content-Type": "application/json"}
FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"server": {"max_body_bytes": 65536}}


def assert_json_error(result: testing.Result, *statuses: int) -> None:
    assert result.status_code in statuses, result.text
    assert result.headers["content-type"] == "application/json"
    assert isinstance(result.json["error"], str)


@FUZZ
@given(body=json_values)
def test_any_json_document_is_accepted_or_refused_with_a_json_400(client, body):
    result = client.simulate_post("/tasks", body=orjson.dumps(body), headers=JSON)

    if result.status_code == 202:
        assert isinstance(body, dict)
        assert isinstance(body["action"], str)
    else:
        assert_json_error(result, 400)


@FUZZ
@given(body=st.binary(max_size=300))
def test_any_bytes_are_accepted_or_refused_with_a_json_400(client, body):
    result = client.simulate_post("/tasks", body=body, headers=JSON)

    if result.status_code != 202:
        assert_json_error(result, 400)


@FUZZ
@given(content_type=st.text(max_size=40).filter(lambda t: "\n" not in t and "\r" not in t))
def test_any_content_type_but_json_is_a_415(client, content_type):
    result = client.simulate_post("/tasks", body=b'{"action": "x"}', headers={"Content-Type": content_type})

    if content_type.split(";")[0].strip().lower() == "application/json":
        assert result.status_code == 202
    else:
        assert_json_error(result, 415)


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["status", "limit", "cursor", "other"]), st.text(max_size=30)))
def test_any_list_parameters_give_a_page_or_a_json_400(client, params):
    result = client.simulate_get("/tasks", params=params)

    if result.status_code == 200:
        assert result.json["count"] == len(result.json["tasks"])
    else:
        assert_json_error(result, 400)


@FUZZ
@given(action=st.text(min_size=1, max_size=200).filter(str.strip), data=st.dictionaries(st.text(), json_values))
def test_a_valid_submission_keeps_its_action_and_data_exactly(action, data):
    task = parse_submission({"action": action, "data": data})

    assert task.action == action
    assert orjson.loads(task.payload) == data


@pytest.mark.parametrize(
    "action",
    ["\u202eevil\u202c", "emoji \U0001f389 task", "zero\u200bwidth", "\u65e5\u672c\u8a9e", "x" * 200],
)
def test_odd_unicode_actions_are_stored_and_shown_as_sent(client, action):
    result = client.simulate_post("/tasks", json={"action": action})

    assert result.status_code == 202
    assert client.simulate_get(f"/tasks/{result.json['id']}").json["action"] == action


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"action": "x", "data": {"n": NaN}}', 400, "invalid JSON"),
        (b'{"action": "x", "data": {"n": Infinity}}', 400, "invalid JSON"),
        (b'{"action": "\\ud800"}', 400, "invalid JSON"),
        (b'{"action": "x\xff"}', 400, "invalid JSON"),
        (b'{"action": "x", "data": {"blob": "' + b"a" * 70000 + b'"}}', 413, "larger than 65536"),
        (b"[" * 100000, 413, "larger than"),
    ],
)
def test_hostile_bodies_get_a_json_error(client, body, status, message):
    result = client.simulate_post("/tasks", body=body, headers=JSON)

    assert_json_error(result, status)
    assert message in result.json["error"]


def test_a_duplicate_key_keeps_the_last_value(client):
    result = client.simulate_post("/tasks", body=b'{"action": "first", "action": "second"}', headers=JSON)

    assert result.status_code == 202
    assert client.simulate_get(f"/tasks/{result.json['id']}").json["action"] == "second"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/tasks", "/tasks/abc/cancel", "/health", "/openapi.json", "/queue/pause"])
def test_unsupported_methods_are_a_json_405(client, method, path):
    assert_json_error(client.simulate_request(method, path), 405)


@pytest.mark.parametrize(
    "path",
    ["/index.html", "/task", "/tasks/a/b", "/../etc/passwd", "/tasks%00", "/dashboard/../run.py", "/dashboard/x.js"],
)
def test_unknown_paths_are_a_json_404(client, path):
    assert_json_error(client.simulate_get(path), 404)


header_values = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


@FUZZ
@given(
    name=st.sampled_from(
        ["Content-Type", "Authorization", "Accept", "Host", "X-Anything"]
    ),  # waitress checks Content-Length
    value=header_values,
    method=st.sampled_from(["GET", "POST"]),
    path=st.sampled_from(["/tasks", "/tasks/x", "/health", "/openapi.json"]),
)
def test_any_header_value_gets_an_answer_or_a_json_4xx_never_a_5xx(client, name, value, method, path):
    result = client.simulate_request(method, path, body=b'{"action": "x"}', headers={name: value})

    assert result.status_code < 500, result.text
    if result.status_code >= 400:
        assert_json_error(result, result.status_code)


@FUZZ
@given(task_id=st.text(st.characters(codec="utf-8"), min_size=1, max_size=300).filter(lambda t: "/" not in t))
def test_any_task_id_in_the_path_is_a_json_404(client, task_id):
    result = client.simulate_get("/tasks/" + urllib.parse.quote(task_id, safe=""))

    assert_json_error(result, 404)


@registry.action("fails_with_nul")
def fails_with_nul(data: dict[str, Any]) -> dict[str, Any]:
    raise InvalidTaskData("a NUL \x00 in the error")


def test_a_nul_in_an_action_name_or_an_error_is_stored_and_spoils_nothing_else(client):
    odd = client.simulate_post("/tasks", body='{"action": "odd\\u0000name", "data": {}}', headers=JSON)
    failing = client.simulate_post("/tasks", json={"action": "fails_with_nul", "data": {}})
    plain = client.simulate_post("/tasks", json={"action": "uppercase", "data": {"text": "x"}})
    assert (odd.status_code, failing.status_code, plain.status_code) == (202, 202, 202)

    def finished(task_id: str) -> dict[str, Any] | None:
        task = client.simulate_get(f"/tasks/{task_id}").json
        return task if task["status"] in ("completed", "failed") else None

    assert wait_until(lambda: finished(plain.json["id"]))["result"] == {"output": "X"}
    assert wait_until(lambda: finished(odd.json["id"]))["action"] in ("odd\x00name", "odd\ufffdname")
    error = wait_until(lambda: finished(failing.json["id"]))["error"]
    assert error.endswith(("a NUL \x00 in the error", "a NUL \ufffd in the error")), error
