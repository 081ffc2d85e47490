from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from hypothesis import settings

from actors.postgres import PostgresEngine
from conf import Config, load_config
from tests.helpers import query, row, wait_until
from tests.servers import AMQP_URL, postgres_schema, rabbitmq_queue

settings.register_profile("no-files", database=None)  # hypothesis keeps no example database
settings.load_profile("no-files")
HYPOTHESIS_CACHE = tempfile.mkdtemp(prefix="hypothesis-")  # and its caches go here, not in the work tree
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = HYPOTHESIS_CACHE


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(HYPOTHESIS_CACHE, ignore_errors=True)


SUMMARY = pytest.StashKey[str]()  # a line for the end of the test run, set by a test module


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if SUMMARY in config.stash:
        terminalreporter.write_line(config.stash[SUMMARY])


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "tasks.db")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names): run the test once on each backend named: embedded (SQLite, the in-process queue)"
        " and distributed (PostgreSQL and RabbitMQ, each test on its own schema and queue)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Which backend the test runs on: "embedded", unless it is marked ``backends(...)``."""
    name: str = getattr(request, "param", "embedded")
    return name


@pytest.fixture
def database(db_path: str, backend: str) -> Iterator[str | PostgresEngine]:
    """The database of an actor-level test: a SQLite file, or PostgreSQL on a schema of its own."""
    if backend == "embedded":
        yield db_path
        return
    with postgres_schema() as url:
        yield PostgresEngine(url)


@pytest.fixture
def config(db_path: str, backend: str) -> Iterator[Config]:
    """The defaults, on a temporary database, with no simulated work and no retry backoff; on the
    distributed backend, on a PostgreSQL schema and a RabbitMQ queue of the test's own."""
    overrides: dict[str, dict[str, Any]] = {
        "store": {"path": db_path},
        "workers": {"work_delay_ms": 0},
        "queue": {"retry_backoff_ms": 0},
    }
    if backend == "embedded":
        yield load_config(env={}, overrides=overrides)
        return
    with postgres_schema() as url, rabbitmq_queue() as queue:
        overrides["store"]["url"] = url
        overrides["queue"] |= {"url": AMQP_URL, "name": queue}
        yield load_config(env={}, overrides=overrides)


@pytest.fixture
def task_row(config: Config) -> Callable[[str], Any]:
    """Reads a task's row from the database the test's configuration names, through a connection of its own."""
    return lambda task_id: row(config.store.url or config.store.path, task_id)


@pytest.fixture
def db_query(config: Config) -> Callable[..., list[Any]]:
    """Runs a query (``?`` placeholders) on the database the test's configuration names."""
    return lambda sql, *params: query(config.store.url or config.store.path, sql, params)


@pytest.fixture(autouse=True)
def no_threads_left_behind() -> Iterator[None]:
    """Stop every actor a test started, and fail the test if any thread outlives it."""
    before = set(threading.enumerate())
    yield
    pykka.ActorRegistry.stop_all(timeout=10)

    def leftovers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    try:
        wait_until(lambda: not leftovers(), what="threads to end")
    except AssertionError:
        pytest.fail(f"threads left behind: {[t.name for t in leftovers()]}")
