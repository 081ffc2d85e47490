"""A task's data and result come back exactly as sent, or are refused with the reason; no stored
row can break a page."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import pytest
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.actions import registry
from actors.jsonvalues import MAX_DEPTH
from tests.helpers import wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")

JSON = {"Content-Type": "application/json"}
INT64 = (-(2**63), 2**63 - 1)


def nested(depth: int, leaf: Any = 1) -> Any:
    """Objects and arrays, alternately, ``depth`` levels deep around ``leaf``."""
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


def post_raw(client: testing.TestClient, body: bytes) -> testing.Result:
    return client.simulate_post("/tasks", body=body, headers=JSON)


def finished(client: testing.TestClient, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task = client.simulate_get(f"/tasks/{task_id}").json
        return task if task["status"] in ("completed", "failed") else None

    return wait_until(done, what=f"task {task_id} to finish")


def same(a: Any, b: Any) -> bool:
    """Equal in value and in JSON type: 1 is not 1.0, and -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@pytest.mark.parametrize("number", [2**63, 2**64, -(2**63) - 1, 10**30, -(10**400)])
def test_an_integer_outside_the_signed_64_bit_range_is_refused_with_the_reason(client, number):
    result = post_raw(client, b'{"action": "x", "data": {"n": %d}}' % number)

    assert result.status_code == 400
    assert "outside the signed 64-bit range" in result.json["error"]


@pytest.mark.parametrize("number", [*INT64, 10**18, 0.1, -0.0, 5e-324, 1.7976931348623157e308])
def test_numbers_within_range_come_back_exactly(client, number):
    result = post_raw(client, json.dumps({"action": "x", "data": {"n": number, "nn": [number]}}).encode())

    assert result.status_code == 202, result.text
    task = client.simulate_get(f"/tasks/{result.json['id']}").json
    assert same(task["data"], {"n": number, "nn": [number]})


def test_data_may_nest_32_levels_and_no_more(client):
    deepest = {"d": nested(MAX_DEPTH - 1)}  # the data object itself is the first level

    accepted = post_raw(client, json.dumps({"action": "x", "data": deepest}).encode())
    refused = post_raw(client, json.dumps({"action": "x", "data": {"d": nested(MAX_DEPTH)}}).encode())

    assert accepted.status_code == 202
    assert client.simulate_get(f"/tasks/{accepted.json['id']}").json["data"] == deepest
    assert refused.status_code == 400
    assert refused.json["error"] == "data is nested more than 32 levels deep"


@pytest.mark.parametrize("body", [b'{"action": "uppercase", "data": null}', b'{"action": "uppercase"}'])
def test_null_or_missing_data_is_an_empty_object_as_in_the_tutorial(client, body):
    result = post_raw(client, body)

    assert result.status_code == 202
    task = finished(client, result.json["id"])
    assert (task["data"], task["status"], task["result"]) == ({}, "completed", {"output": ""})


@registry.action("returns_the_unstorable")
def returns_the_unstorable(data: dict[str, Any]) -> dict[str, Any]:
    values = {"big": 2**64, "nan": math.nan, "inf": -math.inf, "deep": nested(40)}
    return {"value": values[data["kind"]]}


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("big", "the result has an integer outside the signed 64-bit range"),
        ("nan", "the result has a number that is not finite (nan)"),
        ("inf", "the result has a number that is not finite (-inf)"),
        ("deep", "the result is nested more than 32 levels deep"),
    ],
)
def test_a_result_that_would_not_come_back_exactly_fails_the_task_with_the_reason(client, kind, reason):
    task_id = post_raw(client, b'{"action": "returns_the_unstorable", "data": {"kind": "%s"}}' % kind.encode()).json[
        "id"
    ]

    task = finished(client, task_id)

    assert (task["status"], task["result"], task["attempts"]) == ("failed", None, 1)
    assert reason in task["error"]


def store_raw_row(db_path: str, task_id: str, payload: str, result: str | None = None) -> None:
    """A row as an older version, or a damaged file, may have left it: written behind the service's back."""
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO tasks (id, action, payload, status, result, attempts, created_at, available_at)"
            " VALUES (?, 'x', ?, 'completed', ?, 1, '2026-01-01T00:00:00.000000Z', 0)",
            (task_id, payload, result),
        )
    conn.close()


@pytest.mark.backends("embedded")  # writes SQLite rows by hand
def test_a_stored_row_nested_250_levels_deep_still_renders_in_lists_and_alone(client, db_path):
    deep = json.dumps({"d": nested(250)})
    store_raw_row(db_path, "deep", deep, result=deep)
    newer = post_raw(client, b'{"action": "x"}').json["id"]

    page = client.simulate_get("/tasks", params={"limit": 1})
    rest = client.simulate_get("/tasks", params={"cursor": page.json["next_cursor"]})
    alone = client.simulate_get("/tasks/deep")

    assert [t["id"] for t in page.json["tasks"]] == [newer]
    assert rest.status_code == 200, "a cursor pages past the deep row"
    assert [t["id"] for t in rest.json["tasks"]] == ["deep"]
    assert alone.status_code == 200
    assert json.dumps(alone.json["data"]) == json.dumps(json.loads(deep))


@pytest.mark.backends("embedded")  # writes SQLite rows by hand
def test_a_stored_value_that_is_not_json_is_shown_as_null_with_the_reason(client, db_path):
    store_raw_row(db_path, "damaged", '{"text": "cut off', result='{"output": 1}')

    listed = client.simulate_get("/tasks")
    alone = client.simulate_get("/tasks/damaged")

    assert listed.status_code == 200
    assert alone.status_code == 200
    assert listed.json["tasks"] == [alone.json]
    assert (alone.json["data"], alone.json["result"]) == (None, {"output": 1})
    assert alone.json["unreadable"].startswith("data is not valid JSON in the database")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "9" * 5000}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "00001"}, "limit must be a whole number from 1 to 1000"),
        ({"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwLjAwMDAwMFoiLDkyMjMzNzIwMzY4NTQ3NzU4MDhd"}, "cursor"),  # seq 2**63
        ({"cursor": "WyIyMDI2IiwxZTMwMF0"}, "cursor"),  # seq 1e300
        ({"cursor": "A" * 100_000}, "cursor"),
    ],
)
def test_out_of_range_query_parameters_are_a_400_with_the_reason(client, params, message):
    result = client.simulate_get("/tasks", params=params)

    assert result.status_code == 400
    assert message in result.json["error"]


# Any JSON a client could send: integers of any size, nesting past the limit, any unicode
# (lone surrogates included, which JSON text cannot carry as UTF-8), and floats at their edges.
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(*INT64)
    | st.floats()
    | st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, 2.0**53 + 1, 1e-7])
    | st.text(st.characters(codec=None), max_size=8)
)
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
) | st.builds(nested, st.integers(25, 40), leaves)


def storable(value: Any, depth: int = 1) -> bool:
    """Whether the service must accept ``value`` as ``data`` (the rules in actors/jsonvalues.py)."""
    if isinstance(value, dict | list):
        children = list(value.values()) + list(value) if isinstance(value, dict) else value
        return depth <= MAX_DEPTH and all(storable(child, depth + 1) for child in children)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    if isinstance(value, float):
        return math.isfinite(value)
    return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(st.text(max_size=4), json_values, max_size=3))
def test_any_data_comes_back_exactly_from_get_and_list_or_is_refused_with_a_400(client, data):
    body = json.dumps({"action": "x", "data": data}).encode()  # NaN and Infinity go out as such

    result = post_raw(client, body)

    if not storable(data):
        assert result.status_code == 400, f"accepted unstorable data: {body[:300]!r}"
        assert result.json["error"]
        return
    assert result.status_code == 202, result.text
    task_id = result.json["id"]
    assert same(client.simulate_get(f"/tasks/{task_id}").json["data"], data)
    listed = client.simulate_get("/tasks", params={"limit": 1}).json["tasks"]
    assert [t["id"] for t in listed] == [task_id]
    assert same(listed[0]["data"], data)


@pytest.mark.backends("embedded")  # writes SQLite rows by hand
def test_a_row_whose_text_columns_hold_blobs_still_renders_with_the_reason(client, db_path):
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO tasks (id, action, payload, status, error, attempts, created_at, available_at)"
            " VALUES ('blobs', ?, X'7B7D', 'failed', ?, 1, ?, 0)",
            (b"\xff\xfe", b"\x00", b"2026"),
        )
    conn.close()

    listed = client.simulate_get("/tasks")
    alone = client.simulate_get("/tasks/blobs")

    assert listed.status_code == alone.status_code == 200
    assert listed.json["tasks"] == [alone.json]
    assert alone.json["data"] == {}  # JSON text stored as a blob is still JSON
    assert alone.json["unreadable"] == (
        "created_at is not text in the database; action is not text in the database; error is not text in the database"
    )
