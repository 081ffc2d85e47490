"""Fuzzing the API against its own OpenAPI description (schemathesis), with the real actors behind it.

Every generated request, valid or not, must get a response that the description allows: no
5xx, JSON bodies of the documented shape, the documented status codes and headers.
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from collections.abc import Iterator
from typing import Any

import falcon
import pytest
import schemathesis
from falcon import testing
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import positive_data_acceptance

from actors import start_system
from actors.db import FINISHED
from api import create_app
from api.openapi import openapi_document
from conf import Config
from tests.conftest import SUMMARY
from tests.helpers import wait_until

# Every operation that takes input (submit, list, get, delete, cancel, retry, the two bulk actions, a dashboard
# file) gets this many; over 10,000 in all.
EXAMPLES_PER_OPERATION = 1200

schema = schemathesis.openapi.from_dict(openapi_document(auth=False))


class CountingApp:
    """The WSGI app, counting the requests it answers and the 5xx among them."""

    def __init__(self, app: falcon.App, counts: Counter[str]) -> None:
        self._app = app
        self._counts = counts

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        def counting_start_response(status: str, headers: Any, *args: Any) -> Any:
            self._counts["requests"] += 1
            self._counts["5xx"] += status.startswith("5")
            return start_response(status, headers, *args)

        return self._app(environ, counting_start_response)


@pytest.fixture(scope="module")
def counts(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    counts: Counter[str] = Counter()
    yield counts
    request.config.stash[SUMMARY] = f"schemathesis: {counts['requests']} requests, {counts['5xx']} answered 5xx"
    assert counts["5xx"] == 0


SEED_TASKS = [
    {"action": "uppercase", "data": {"text": "hello"}},
    {"action": "sum", "data": {"numbers": "not a list"}},  # fails: a task with errors
    {"action": "anything"},
]


@pytest.fixture
def app(config: Config, counts: Counter[str]) -> Iterator[CountingApp]:
    """The app on real actors, with a few finished tasks, so that lists show tasks of every kind."""
    system = start_system(config)
    client = testing.TestClient(create_app(system))
    ids = [client.simulate_post("/tasks", json=body).json["id"] for body in SEED_TASKS]
    wait_until(
        lambda: all(client.simulate_get(f"/tasks/{i}").json["status"] in FINISHED for i in ids), what="the seed tasks"
    )
    yield CountingApp(create_app(system), counts)
    system.stop()


def test_the_served_description_is_the_one_fuzzed(app):
    assert testing.TestClient(app).simulate_get("/openapi.json").json == openapi_document(auth=False)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_every_response_matches_the_openapi_description(case, app):
    # The description cannot say which cursors are valid (they are opaque), so a schema-valid
    # request may rightly get 400: the check that valid-looking data is always accepted is off.
    case.call_and_validate(app=app, excluded_checks=[positive_data_acceptance])


def test_the_description_carries_the_package_version():
    assert openapi_document(auth=False)["info"]["version"] == importlib.metadata.version("task-queue")


@pytest.mark.parametrize("auth", [False, True])
def test_the_description_is_valid_openapi(auth):
    validate(openapi_document(auth=auth))
