from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from hypothesis import settings

from conf import Config, load_config
from tests.helpers import wait_until

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


@pytest.fixture
def config(db_path: str) -> Config:
    """The defaults, on a temporary database, with no simulated work and no retry backoff."""
    return load_config(
        env={},
        overrides={
            "store": {"path": db_path},
            "workers": {"work_delay_ms": 0},
            "queue": {"retry_backoff_ms": 0},
        },
    )


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
