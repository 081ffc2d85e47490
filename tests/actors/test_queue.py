from __future__ import annotations

import dataclasses
import queue as stdlib_queue
import time
from typing import Any

import orjson
import pykka
import pytest

from actors.actions import registry
from actors.commit_signal import CommitSignal
from actors.db import utc_now
from actors.messages import (
    Ack,
    Execute,
    FetchReady,
    InsertTask,
    Inspect,
    MarkRunning,
    Nack,
    NewTask,
    QueuedTask,
    QueueState,
    ReadyTasks,
    Submit,
    Wake,
)
from actors.queue import QueueActor, StartWorker
from actors.worker import WorkerActor
from conf import QueueConfig, WorkersConfig, load_config
from tests.helpers import Recorder, receive, row, start_recorder, wait_until


@pytest.fixture
def fake_workers() -> tuple[StartWorker, stdlib_queue.Queue[Any]]:
    """Workers played by the test: every Execute sent to any of them lands in one inbox."""
    inbox: stdlib_queue.Queue[Any] = stdlib_queue.Queue()
    return (lambda supervisor, interrupts: Recorder.start(inbox)), inbox


DEFAULTS = load_config(env={})


def real_workers(supervisor: pykka.ActorRef[Any], interrupts: stdlib_queue.SimpleQueue[int]) -> pykka.ActorRef[Any]:
    return WorkerActor.start(registry, supervisor=supervisor, interrupts=interrupts)


def settings(**changes: int) -> QueueConfig:
    """The default queue settings, with no retry backoff unless asked for."""
    return dataclasses.replace(DEFAULTS.queue, **({"retry_backoff_ms": 0} | changes))


def pool(**changes: int) -> WorkersConfig:
    return dataclasses.replace(DEFAULTS.workers, **changes)


def submit(queue: pykka.ActorRef[Any], n: int, action: str = "uppercase") -> str:
    task = NewTask(f"task-{n:03d}", action, orjson.dumps({"text": f"t{n}"}).decode(), utc_now())
    committed = CommitSignal()
    queue.tell(Submit(task, committed))
    committed.get(timeout=10)
    return task.id


def state(queue: pykka.ActorRef[Any]) -> QueueState:
    return queue.ask(Inspect(), timeout=10)


def test_a_submitted_task_is_committed_then_dispatched(store, fake_workers, db_path):
    start_worker, inbox = fake_workers
    queue = QueueActor.start(store, start_worker, settings(), pool())

    task_id = submit(queue, 1)

    execute = receive(inbox, Execute)
    assert execute.task.id == task_id
    assert execute.reply_to == queue
    wait_until(lambda: row(db_path, task_id)["status"] == "running", what="status running")
    assert row(db_path, task_id)["attempts"] == 1


def test_at_most_prefetch_tasks_are_in_flight_across_the_workers(store, fake_workers):
    start_worker, inbox = fake_workers
    queue = QueueActor.start(store, start_worker, settings(prefetch=5), pool())

    ids = [submit(queue, n) for n in range(8)]

    assert state(queue) == QueueState(
        ready=3,
        in_flight=5,
        backlog=False,
        draining=False,
        paused=False,
        cancelling=0,
        workers=2,
        worker_restarts=0,
        unfinished=8,
        finished_per_minute=(0,) * 60,
    )
    executes = [receive(inbox, Execute) for _ in range(5)]
    assert [e.task.id for e in executes] == ids[:5]
    assert inbox.empty()

    queue.tell(Ack(ids[0], 1, "{}"))

    assert receive(inbox, Execute).task.id == ids[5]
    assert state(queue).in_flight == 5


def test_tasks_are_spread_over_the_workers(store):
    inboxes: list[stdlib_queue.Queue[Any]] = []

    def start_worker(supervisor, interrupts):
        inboxes.append(stdlib_queue.Queue())
        return Recorder.start(inboxes[-1])

    queue = QueueActor.start(store, start_worker, settings(prefetch=4), pool())

    for n in range(4):
        submit(queue, n)

    assert state(queue).in_flight == 4
    wait_until(lambda: [inbox.qsize() for inbox in inboxes] == [2, 2], what="two tasks for each worker")


def test_an_ack_completes_the_task_with_its_result(store, fake_workers, db_path):
    start_worker, inbox = fake_workers
    queue = QueueActor.start(store, start_worker, settings(), pool())
    task_id = submit(queue, 1)
    receive(inbox, Execute)

    queue.tell(Ack(task_id, 1, '{"output": "T1"}'))

    done = wait_until(lambda: (r := row(db_path, task_id))["status"] == "completed" and r, what="completion")
    assert orjson.loads(done["result"]) == {"output": "T1"}
    assert done["processed_at"] is not None
    assert state(queue).in_flight == 0


def test_a_nack_is_retried_until_max_attempts_then_dead_lettered(store, fake_workers, db_path):
    start_worker, inbox = fake_workers
    queue = QueueActor.start(store, start_worker, settings(max_attempts=3), pool())
    task_id = submit(queue, 1)

    for attempt in (1, 2, 3):
        execute = receive(inbox, Execute)
        assert (execute.task.id, execute.task.attempts) == (task_id, attempt - 1)
        queue.tell(Nack(task_id, attempt, f"RuntimeError: try {attempt}", retryable=True))

    failed = wait_until(lambda: (r := row(db_path, task_id))["status"] == "failed" and r, what="dead letter")
    assert (failed["attempts"], failed["error"]) == (3, "RuntimeError: try 3")
    assert (state(queue).ready, state(queue).in_flight) == (0, 0)
    assert inbox.empty()


def test_a_nack_that_cannot_be_retried_fails_at_once(store, fake_workers, db_path):
    start_worker, inbox = fake_workers
    queue = QueueActor.start(store, start_worker, settings(max_attempts=3), pool())
    task_id = submit(queue, 1)
    receive(inbox, Execute)

    queue.tell(Nack(task_id, 1, "sum needs data.numbers", retryable=False))

    failed = wait_until(lambda: (r := row(db_path, task_id))["status"] == "failed" and r, what="failure")
    assert (failed["attempts"], failed["error"]) == (1, "sum needs data.numbers")


def test_a_retry_waits_for_its_backoff(store, fake_workers):
    start_worker, inbox = fake_workers
    queue = QueueActor.start(store, start_worker, settings(retry_backoff_ms=300, retry_backoff_max_ms=1000), pool())
    task_id = submit(queue, 1)
    receive(inbox, Execute)

    nacked_at = time.monotonic()
    queue.tell(Nack(task_id, 1, "flaky", retryable=True))

    retry = receive(inbox, Execute)
    assert retry.task.id == task_id
    assert time.monotonic() - nacked_at >= 0.3


def test_tasks_a_previous_run_left_unfinished_are_run_on_start(store, fake_workers, db_path):
    recorder, _ = start_recorder()
    for status in ("queued", "running"):
        task = NewTask(f"old-{status}", "uppercase", "{}", utc_now())
        committed = CommitSignal()
        store.tell(InsertTask(task, committed, recorder))
        committed.get(timeout=10)
        if status == "running":
            store.tell(MarkRunning(task.id, utc_now()))
    start_worker, inbox = fake_workers

    QueueActor.start(store, start_worker, settings(), pool())

    executes = sorted((receive(inbox, Execute) for _ in range(2)), key=lambda e: e.task.id)
    assert [(e.task.id, e.task.attempts) for e in executes] == [("old-queued", 0), ("old-running", 1)]


def test_a_backlog_larger_than_the_window_is_paged_from_the_store_in_order(store, db_path):
    queue = QueueActor.start(store, real_workers, settings(prefetch=1, window=3), pool(count=1))

    ids = [submit(queue, n) for n in range(20)]

    wait_until(lambda: all(row(db_path, i)["status"] == "completed" for i in ids), what="all completed")
    finished = sorted(ids, key=lambda i: row(db_path, i)["processed_at"])
    assert finished == ids
    assert state(queue).ready == 0


def test_a_late_answer_to_an_earlier_attempt_is_ignored(store, fake_workers, db_path):
    start_worker, inbox = fake_workers
    queue = QueueActor.start(store, start_worker, settings(), pool())
    task_id = submit(queue, 1)
    receive(inbox, Execute)
    queue.tell(Nack(task_id, 1, "flaky", retryable=True))
    assert receive(inbox, Execute).task.attempts == 1  # the second attempt is running

    queue.tell(Ack(task_id, 1, '{"late": true}'))  # the first attempt's worker, late

    assert state(queue).in_flight == 1
    queue.tell(Ack(task_id, 2, '{"output": "T1"}'))
    done = wait_until(lambda: (r := row(db_path, task_id))["status"] == "completed" and r, what="completion")
    assert orjson.loads(done["result"]) == {"output": "T1"}


def next_of(inbox: stdlib_queue.Queue[Any], kind: type[Any]) -> Any:
    """The next message of ``kind`` in ``inbox``, skipping others."""
    while not isinstance(message := receive(inbox, object), kind):
        pass
    return message


def test_a_wake_during_a_fetch_makes_the_fetched_window_stale_and_fetches_again(fake_workers):
    start_worker, workers_inbox = fake_workers
    store_inbox: stdlib_queue.Queue[Any] = stdlib_queue.Queue()
    store = Recorder.start(store_inbox)
    queue = QueueActor.start(store, start_worker, settings(window=2, prefetch=1), pool(count=1))

    def task(n: int) -> QueuedTask:
        return QueuedTask(f"t{n}", "a", "{}", 0)

    next_of(store_inbox, FetchReady)
    queue.tell(ReadyTasks((task(1), task(2)), None))  # a full window: more may wait in the store
    assert next_of(workers_inbox, Execute).task.id == "t1"
    queue.tell(Ack("t1", 1, "{}"))
    assert next_of(workers_inbox, Execute).task.id == "t2"  # the window is empty now: it fetches
    next_of(store_inbox, FetchReady)
    queue.tell(Wake())  # a task of a higher priority is due, after that fetch read the store
    queue.tell(ReadyTasks((task(3), task(4)), None))  # so this answer is stale

    assert next_of(store_inbox, FetchReady)  # fetched again, at once
    queue.tell(Ack("t2", 1, "{}"))
    queue.tell(ReadyTasks((QueuedTask("urgent", "a", "{}", 0, priority=10), task(3)), None))
    assert next_of(workers_inbox, Execute).task.id == "urgent"
