from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from falcon import testing

from actors import TaskSystem, start_system
from api import create_app
from conf import Config


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    """Configuration changes for the system under test; a test module overrides this fixture."""
    return {}


@pytest.fixture
def system(config: Config, settings: dict[str, dict[str, Any]]) -> Iterator[TaskSystem]:
    """The real actors on a temporary database, stopped after the test."""
    system = start_system(config.replace(**settings))
    yield system
    system.stop()


@pytest.fixture
def client(system: TaskSystem) -> testing.TestClient:
    return testing.TestClient(create_app(system))
