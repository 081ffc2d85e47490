"""Idempotency-Key on POST /tasks: the same key and request give the same task, once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from falcon import testing

from actors import start_system
from api import create_app
from tests.helpers import wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")


def post(client: testing.TestClient, body: Any, key: str | None) -> testing.Result:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.simulate_post("/tasks", json=body, headers=headers)


def stored_ids(client: testing.TestClient) -> list[str]:
    return [t["id"] for t in client.simulate_get("/tasks").json["tasks"]]


def test_the_same_key_and_request_give_the_same_task_once(client):
    first = post(client, {"action": "uppercase", "data": {"a": 1, "b": 2}}, "order-42")
    again = post(client, {"data": {"b": 2, "a": 1}, "action": "uppercase"}, "order-42")  # the same, reordered

    assert first.status_code == again.status_code == 202
    assert again.json == first.json
    assert again.headers["location"] == first.headers["location"]
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert stored_ids(client) == [first.json["id"]]


def test_the_same_key_with_another_request_is_a_422_and_stores_nothing(client):
    first = post(client, {"action": "uppercase", "data": {"text": "a"}}, "k1")

    other = post(client, {"action": "uppercase", "data": {"text": "b"}}, "k1")

    assert other.status_code == 422
    assert other.json == {
        "error": "this Idempotency-Key was used with a different request; use a new key for a new task"
    }
    assert stored_ids(client) == [first.json["id"]]


def test_without_a_key_or_with_another_key_each_submit_is_a_new_task(client):
    body = {"action": "uppercase"}
    ids = [post(client, body, key).json["id"] for key in (None, None, "a", "b", '"a"')]

    assert len(set(ids)) == 4, "a quoted key (as the IETF draft sends it) is the same key"
    assert ids[4] == ids[2]


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_a_400(client, key):
    result = client.simulate_post("/tasks", json={"action": "x"}, headers={"Idempotency-Key": key})

    assert (result.status_code, result.json) == (
        400,
        {"error": "Idempotency-Key must be 1 to 255 printable ASCII characters"},
    )


def test_concurrent_submits_with_one_key_store_one_task(client):
    answers: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        result = post(client, {"action": "uppercase", "data": {"text": "once"}}, "race")
        with lock:
            answers.append(result.json["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(answers) == 8
    assert len(set(answers)) == 1
    assert stored_ids(client) == answers[:1]


@pytest.mark.parametrize("settings", [{"store": {"idempotency_window_s": 1}}])
def test_a_key_is_forgotten_after_its_window(client):
    first = post(client, {"action": "uppercase"}, "short-lived").json["id"]

    later = wait_until(
        lambda: (answer := post(client, {"action": "uppercase"}, "short-lived").json["id"]) != first and answer,
        what="the key's window to pass",
    )

    assert later != first


def test_the_length_limit_counts_the_quotes_of_a_quoted_key(client):
    quoted = '"' + "k" * 254 + '"'  # 256 characters as sent

    result = client.simulate_post("/tasks", json={"action": "x"}, headers={"Idempotency-Key": quoted})

    assert result.status_code == 400


def test_defaults_sent_or_left_out_are_the_same_request_and_a_delay_or_priority_another(client):
    first = post(client, {"action": "uppercase"}, "k")
    same = post(client, {"action": "uppercase", "data": None, "priority": 0, "delay_ms": None}, "k")
    assert (same.status_code, same.json["id"]) == (202, first.json["id"])

    assert post(client, {"action": "uppercase", "priority": 1}, "k").status_code == 422
    assert post(client, {"action": "uppercase", "delay_ms": 10}, "k").status_code == 422
    delayed = post(client, {"action": "uppercase", "delay_ms": 60_000}, "later")
    assert post(client, {"action": "uppercase", "delay_ms": 60_000}, "later").json["id"] == delayed.json["id"]


@pytest.mark.backends("distributed")
def test_one_key_sent_to_two_instances_at_once_gives_one_task(config, db_query):
    instances = [start_system(config), start_system(config)]
    try:
        clients = [testing.TestClient(create_app(instance)) for instance in instances]
        body = {"action": "uppercase", "data": {"text": "once"}}

        def send(client: testing.TestClient, key: str) -> testing.Result:
            """As a client does: a 503 (two instances' transactions waiting on each other's keys: one
            is rolled back) is sent again with the same key."""
            answer = wait_until(lambda: (answer := post(client, body, key)).status_code != 503 and answer)
            return answer

        sends = [(client, f"key-{n}") for n in range(20) for client in clients]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda args: send(*args), sends))

        assert {answer.status_code for answer in answers} == {202}
        ids = [answer.json["id"] for answer in answers]
        assert all(ids[n] == ids[n + 1] for n in range(0, 40, 2)), "both instances answer with one task per key"
        assert len(db_query("SELECT id FROM tasks")) == 20
    finally:
        for instance in instances:
            instance.stop()
