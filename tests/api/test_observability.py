"""``GET /metrics`` (Prometheus, through prometheus-client), the task log lines, JSON lines, and the request log."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from falcon import testing
from prometheus_client.parser import text_string_to_metric_families

import actors.metrics
from actors import start_system
from actors.actions import registry
from api import create_app
from api.logs import TEXT_FORMAT, JsonLines, TextLines
from tests.api.test_bulk import FAILS, finished, submit_body
from tests.helpers import wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")


@registry.action("flaky_once")
def flaky_once(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("attempt_fails", True):
        raise RuntimeError("the network is down")
    return {}


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"queue": {"max_attempts": 2}}


def samples(client: testing.TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = client.simulate_get("/metrics")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(result.text)
        for sample in family.samples
    }


def test_metrics_count_what_happened_to_tasks_by_action_and_show_the_queue(client):
    completed = [submit_body(client, {"action": "uppercase", "data": {"text": "a"}}) for _ in range(2)]
    failed = submit_body(client, FAILS)
    flaky = submit_body(client, {"action": "flaky_once"})  # fails twice: retried once, then failed
    finished(client, [*completed, failed, flaky], "completed", "failed")
    client.simulate_post("/queue/pause")
    submit_body(client, {"action": "sum", "delay_ms": 60_000})

    found = samples(client)

    def value(name: str, **labels: str) -> float:
        return found[(f"task_queue_{name}", tuple(sorted(labels.items())))]

    assert value("tasks_submitted_total", action="uppercase") == 3
    assert value("tasks_completed_total", action="uppercase") == 2
    assert value("tasks_failed_total", action="uppercase") == 1
    assert value("tasks_retried_total", action="flaky_once") == 1
    assert value("tasks_failed_total", action="flaky_once") == 1
    assert value("task_duration_seconds_count", action="uppercase") == 3
    assert value("submit_seconds_count") == 5
    assert value("store_commit_writes_count") >= 1
    assert value("worker_restarts_total") == 0
    assert value("tasks", status="completed") == 2
    assert value("tasks", status="failed") == 2
    assert value("tasks", status="queued") == 1
    assert (value("tasks_ready"), value("tasks_delayed"), value("tasks_in_flight")) == (0, 1, 0)
    assert (value("paused"), value("workers"), value("oldest_ready_age_seconds")) == (1, 2, 0)


def test_action_labels_stop_growing_past_a_limit(client, monkeypatch):
    monkeypatch.setattr(actors.metrics, "MAX_OTHER_ACTIONS", 2)
    ids = [submit_body(client, {"action": f"made_up_{n}"}) for n in range(4)]
    finished(client, ids, "completed")

    labels = {
        dict(labels).get("action") for name, labels in samples(client) if name == "task_queue_tasks_completed_total"
    }
    assert labels == {"made_up_0", "made_up_1", "other"}


def test_metrics_can_be_turned_off(config):
    system = start_system(config.replace(metrics={"enabled": False}))
    try:
        result = testing.TestClient(create_app(system)).simulate_get("/metrics")
        assert result.status_code == 404
        assert result.json == {"error": "not found"} or "error" in result.json
    finally:
        system.stop()


def test_each_finished_attempt_is_one_log_line_without_the_task_data(client, caplog):
    caplog.set_level(logging.INFO, "task_queue.tasks")
    done = submit_body(client, {"action": "uppercase", "data": {"text": "secret-value"}})
    flaky = submit_body(client, {"action": "flaky_once", "data": {"note": "secret-value"}})
    finished(client, [done, flaky], "completed", "failed")

    lines = {(r.levelname, r.task["task_id"], r.task["attempt"], r.task["outcome"]) for r in caplog.records}
    assert lines == {
        ("INFO", done, 1, "completed"),
        ("INFO", flaky, 1, "retried"),
        ("WARNING", flaky, 2, "failed"),
    }
    failure = next(r.getMessage() for r in caplog.records if r.task["outcome"] == "failed")
    assert f"task {flaky} flaky_once attempt 2 failed in " in failure
    assert "RuntimeError: the network is down" in failure
    assert "Traceback (most recent call last)" in failure
    assert "secret-value" not in caplog.text


def test_task_data_is_logged_when_asked_for(config, caplog):
    caplog.set_level(logging.INFO, "task_queue.tasks")
    system = start_system(config.replace(log={"task_data": True}))
    try:
        client = testing.TestClient(create_app(system))
        done = submit_body(client, {"action": "uppercase", "data": {"text": "visible"}})
        finished(client, [done], "completed")
        wait_until(lambda: "visible" in caplog.text, what="the log line")
    finally:
        system.stop()


def test_json_lines_carry_the_task_fields(client, caplog):
    caplog.set_level(logging.INFO, "task_queue.tasks")
    done = submit_body(client, {"action": "uppercase"})
    finished(client, [done], "completed")

    line = orjson.loads(JsonLines().format(wait_until(lambda: caplog.records and caplog.records[-1])))
    assert line["level"] == "INFO"
    assert line["logger"] == "task_queue.tasks"
    assert (line["task_id"], line["action"], line["attempt"], line["outcome"]) == (done, "uppercase", 1, "completed")
    assert line["duration_ms"] >= 0
    assert line["time"].endswith("Z")


def test_the_request_log_has_a_line_per_request(config, caplog):
    caplog.set_level(logging.INFO, "task_queue.requests")
    system = start_system(config.replace(log={"requests": True}))
    try:
        client = testing.TestClient(create_app(system))
        client.simulate_get("/tasks")
        client.simulate_get("/tasks/nope")
    finally:
        system.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("GET /tasks 200 ")
    assert messages[1].startswith("GET /tasks/nope 404 ")
    assert caplog.records[1].request["status"] == 404


def test_text_lines_are_the_standard_format_written_faster():
    record = logging.LogRecord("task_queue.tasks", logging.INFO, "", 0, "task %s done", ("t1",), None)
    assert TextLines().format(record) == logging.Formatter(TEXT_FORMAT).format(record)
