"""The queue as the workers' supervisor: dead workers are replaced, within a restart limit."""

from __future__ import annotations

import dataclasses
import queue as stdlib_queue
from typing import Any

import pykka

from actors.commit_signal import CommitSignal
from actors.db import utc_now
from actors.messages import Execute, Inspect, NewTask, Submit, WorkerFailed
from actors.queue import QueueActor
from conf import load_config
from tests.helpers import Recorder, receive, row, wait_until

DEFAULTS = load_config(env={})


class FakePool:
    """Workers played by the test; it remembers every worker the queue starts."""

    def __init__(self) -> None:
        self.inbox: stdlib_queue.Queue[Any] = stdlib_queue.Queue()
        self.started: list[pykka.ActorRef[Any]] = []

    def start_worker(self, supervisor: pykka.ActorRef[Any], interrupts: Any) -> pykka.ActorRef[Any]:
        self.started.append(Recorder.start(self.inbox))
        return self.started[-1]

    def kill(self, queue: pykka.ActorRef[Any], worker: pykka.ActorRef[Any]) -> None:
        """What a dying worker does: tell its supervisor, then stop."""
        queue.tell(WorkerFailed(worker, "RuntimeError: boom"))
        worker.stop()


def start_queue(store: pykka.ActorRef[Any], pool: FakePool, **workers: int) -> pykka.ActorRef[Any]:
    settings = dataclasses.replace(DEFAULTS.queue, retry_backoff_ms=0)
    return QueueActor.start(store, pool.start_worker, settings, dataclasses.replace(DEFAULTS.workers, **workers))


def submit(queue: pykka.ActorRef[Any], task_id: str) -> None:
    committed = CommitSignal()
    queue.tell(Submit(NewTask(task_id, "x", "{}", utc_now()), committed))
    committed.get(timeout=10)


def test_a_dead_worker_is_replaced_and_the_tasks_it_held_run_again(store, db_path):
    pool = FakePool()
    queue = start_queue(store, pool, count=2)
    for n in range(4):
        submit(queue, f"task-{n}")
    executes = [receive(pool.inbox, Execute) for _ in range(4)]
    first_worker = pool.started[0]

    pool.kill(queue, first_worker)

    retried = sorted(receive(pool.inbox, Execute).task.id for _ in range(2))
    assert retried == sorted(e.task.id for e in executes[::2]), "the dead worker held every other task"
    state = queue.ask(Inspect(), timeout=10)
    assert (state.workers, state.worker_restarts, state.in_flight) == (2, 1, 4)
    assert len(pool.started) == 3
    assert row(db_path, retried[0])["error"] == "the worker running it failed: RuntimeError: boom"


def test_workers_dying_faster_than_the_restart_limit_bring_the_queue_down(store):
    pool = FakePool()
    queue = start_queue(store, pool, count=1, max_restarts=2, restart_window_s=60)

    for restart in range(3):
        wait_until(lambda n=restart + 1: len(pool.started) == n, what=f"worker {restart + 1}")
        pool.kill(queue, pool.started[-1])

    assert queue.actor_stopped.wait(10), "the queue gives up (let it crash)"
    assert len(pool.started) == 3


def test_a_failure_report_from_a_worker_already_replaced_is_ignored(store):
    pool = FakePool()
    queue = start_queue(store, pool, count=1)
    old = wait_until(lambda: pool.started and pool.started[0], what="the first worker")
    pool.kill(queue, old)
    wait_until(lambda: len(pool.started) == 2, what="the replacement")

    queue.tell(WorkerFailed(old, "RuntimeError: again"))

    state = queue.ask(Inspect(), timeout=10)
    assert (state.workers, state.worker_restarts) == (1, 1)


def test_a_worker_found_dead_when_handed_a_task_is_replaced_and_the_task_retried(store, db_path):
    pool = FakePool()
    queue = start_queue(store, pool, count=1)
    dead = wait_until(lambda: pool.started and pool.started[0], what="the first worker")
    dead.stop()  # dead, and it told nobody

    submit(queue, "task-0")

    assert receive(pool.inbox, Execute).task.id == "task-0"
    state = queue.ask(Inspect(), timeout=10)
    assert (state.workers, state.worker_restarts) == (1, 1)
    wait_until(lambda: row(db_path, "task-0")["attempts"] == 2, what="the second attempt to be recorded")
