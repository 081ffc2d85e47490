from __future__ import annotations

from typing import Any

import pykka
import pytest

from actors.messages import Migrate
from actors.migration import MigrationActor
from actors.store import StoreActor


@pytest.fixture
def store(db_path: str) -> pykka.ActorRef[Any]:
    """A StoreActor on a freshly migrated temporary database."""
    MigrationActor.start(db_path).ask(Migrate(), timeout=10)
    return StoreActor.start(db_path)
