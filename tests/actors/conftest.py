from __future__ import annotations

from typing import Any

import pykka
import pytest

from actors.messages import Migrate
from actors.migration import MigrationActor
from actors.postgres import PostgresEngine
from actors.store import StoreActor
from tests.helpers import an_instance


@pytest.fixture
def store(database: str | PostgresEngine) -> pykka.ActorRef[Any]:
    """A StoreActor on a freshly migrated temporary database (SQLite, or PostgreSQL on a schema of its own)."""
    MigrationActor.start(database).ask(Migrate(), timeout=10)
    return StoreActor.start(database, instance=an_instance("this") if isinstance(database, PostgresEngine) else None)
