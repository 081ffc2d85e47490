"""The actors of task-queue and the functions that start and stop them.

Start with :func:`start_system`; each actor module documents its message protocol at the
top, and :mod:`actors.messages` holds every message.
"""

from actors.actions import ActionRegistry, InvalidTaskData, registry
from actors.dblock import DatabaseInUse
from actors.migration import MigrationActor
from actors.queue import QueueActor
from actors.store import StoreActor
from actors.system import NotAccepted, TaskSystem, start_system
from actors.worker import WorkerActor

__all__ = [
    "ActionRegistry",
    "DatabaseInUse",
    "InvalidTaskData",
    "MigrationActor",
    "NotAccepted",
    "QueueActor",
    "StoreActor",
    "TaskSystem",
    "WorkerActor",
    "registry",
    "start_system",
]
