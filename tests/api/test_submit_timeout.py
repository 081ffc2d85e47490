"""A submit whose commit does not come in time: 503 either way, and the answer says whether the
task was not stored (submit it again) or may have been (here is its id: look it up)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from falcon import testing

from actors import TaskSystem, WorkerActor, registry
from actors.db import utc_now
from actors.dblock import DatabaseLock
from actors.messages import MarkRunning, Migrate
from actors.migration import MigrationActor
from actors.queue import QueueActor
from actors.reader import TaskReader
from actors.store import StoreActor
from api import create_app
from conf import Config
from tests.helpers import WriteLockHolder, wait_until


@pytest.fixture
def settings() -> dict[str, dict[str, Any]]:
    return {"server": {"submit_timeout_ms": 300}, "store": {"busy_timeout_ms": 30_000}}


def test_a_submit_that_times_out_before_the_store_takes_it_is_not_stored(client, system, db_path):
    lock = WriteLockHolder(db_path)  # the store waits for this lock before it takes the next task
    try:
        system.store.tell(MarkRunning("none", utc_now()))  # a write that waits for it, ahead of the submit
        result = client.simulate_post("/tasks", json={"action": "x"})
    finally:
        lock.release()

    assert result.status_code == 503
    assert result.headers["retry-after"] == "1"
    assert result.json == {"error": "the store did not take the task in time; it was not stored, submit it again"}
    system.inspect_store(timeout=30)  # the store has caught up with everything told before
    assert client.simulate_get("/tasks").json["tasks"] == [], "and it never will be"


class StallingStore(StoreActor):
    """A real store whose commits wait for the test's word: a disk that stops answering mid-commit."""

    def __init__(self, db_path: str, go_on: threading.Event) -> None:
        super().__init__(db_path)
        self._go_on = go_on

    def _commit(self) -> None:
        if self._inserted:  # a commit of new tasks, taken already
            self._go_on.wait(30)
        super()._commit()


@pytest.fixture
def stalling_system(config: Config) -> Iterator[tuple[TaskSystem, threading.Event]]:
    config = config.replace(server={"submit_timeout_ms": 300})
    db_path = config.store.path
    lock = DatabaseLock(db_path)
    lock.acquire()
    MigrationActor.start(db_path).ask(Migrate(), timeout=10)
    go_on = threading.Event()
    store = StallingStore.start(db_path, go_on)

    def start_worker(supervisor: pykka.ActorRef[Any], interrupts: Any) -> pykka.ActorRef[Any]:
        return WorkerActor.start(registry, 0.0, 60, supervisor, interrupts=interrupts)

    queue = QueueActor.start(store, start_worker, config.queue, config.workers)
    system = TaskSystem(config, 1, store, queue, TaskReader(db_path), lock)
    yield system, go_on
    go_on.set()
    system.stop()


def test_a_submit_that_times_out_after_the_store_took_it_answers_its_id_to_look_up(stalling_system):
    system, go_on = stalling_system
    client = testing.TestClient(create_app(system))

    result = client.simulate_post("/tasks", json={"action": "uppercase", "data": {"text": "once"}})

    assert result.status_code == 503
    assert result.headers["retry-after"] == "1"
    task_id = result.json["id"]
    assert result.headers["location"] == f"/tasks/{task_id}"
    assert result.json["error"] == (
        "the store took the task but did not confirm its commit in time: look it up before submitting it again"
    )
    go_on.set()
    task = wait_until(
        lambda: (
            (t := client.simulate_get(f"/tasks/{task_id}")).status_code == 200
            and t.json["status"] == "completed"
            and t.json
        ),
        what="the task to be stored and run",
    )
    assert task["result"] == {"output": "ONCE"}
