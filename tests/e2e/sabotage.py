"""Actions that break the service from inside, for the end-to-end tests of let-it-crash.

Loaded only by tests, with TASK_QUEUE_WORKERS_IMPORTS=tests.e2e.sabotage.
"""

from __future__ import annotations

from typing import Any

import pykka

from actors.actions import registry
from actors.store import StoreActor


@registry.action("stop_the_store")
def stop_the_store(data: dict[str, Any]) -> dict[str, Any]:
    for store in pykka.ActorRegistry.get_by_class(StoreActor):
        store.stop(block=False)
    return {"output": "stopped"}
