"""Bounds that keep the service answering under overload: the backlog and the submits waiting."""

from __future__ import annotations

import dataclasses
import queue as stdlib_queue
import threading
import time
from typing import Any

import pykka
import pytest

from actors import NotAccepted, start_system
from actors.commit_signal import CommitSignal
from actors.db import utc_now
from actors.messages import Ack, Execute, InsertTask, Inspect, NewTask, Submit
from actors.queue import QueueActor, QueueFull
from conf import load_config
from tests.helpers import Recorder, WriteLockHolder, receive, start_recorder, wait_until

DEFAULTS = load_config(env={})


def new_task(n: int) -> NewTask:
    return NewTask(f"task-{n}", "x", "{}", utc_now())


def submit(queue: pykka.ActorRef[Any], n: int) -> None:
    committed = CommitSignal()
    queue.tell(Submit(new_task(n), committed))
    committed.get(timeout=10)


def test_submits_beyond_the_backlog_bound_are_refused_until_tasks_finish(store):
    inbox: stdlib_queue.Queue[Any] = stdlib_queue.Queue()
    settings = dataclasses.replace(DEFAULTS.queue, max_backlog=3)
    queue = QueueActor.start(store, lambda sup, interrupts: Recorder.start(inbox), settings, DEFAULTS.workers)
    for n in range(3):
        submit(queue, n)

    with pytest.raises(QueueFull):
        submit(queue, 3)

    queue.tell(Ack(receive(inbox, Execute).task.id, 1, "{}"))
    submit(queue, 4)
    assert queue.ask(Inspect(), timeout=10).unfinished == 3


def test_the_backlog_bound_counts_tasks_left_by_a_previous_run(store):
    recorder, _ = start_recorder()
    for n in range(2):
        committed = CommitSignal()
        store.tell(InsertTask(new_task(n), committed, recorder))
        committed.get(timeout=10)
    settings = dataclasses.replace(DEFAULTS.queue, max_backlog=3)
    inbox: stdlib_queue.Queue[Any] = stdlib_queue.Queue()
    queue = QueueActor.start(store, lambda sup, interrupts: Recorder.start(inbox), settings, DEFAULTS.workers)
    wait_until(lambda: queue.ask(Inspect(), timeout=10).unfinished == 2, what="the recovered backlog")

    submit(queue, 2)
    with pytest.raises(QueueFull):
        submit(queue, 3)


def test_submits_beyond_the_stalled_bound_are_refused_at_once_while_the_store_is_stuck(config, db_path):
    system = start_system(
        config.replace(
            server={"threads": 4, "max_stalled_submits": 2, "stall_ms": 100, "submit_timeout_ms": 20000},
            store={"busy_timeout_ms": 20000},
        )
    )
    lock = WriteLockHolder(db_path)
    results: list[str] = []

    def waiting_submit(n: int) -> None:
        system.submit(new_task(n))
        results.append(f"task-{n}")

    waiting = [threading.Thread(target=waiting_submit, args=(n,)) for n in range(2)]
    try:
        for thread in waiting:
            thread.start()
        wait_until(lambda: system.pending_submits == (2, 2), what="two submits stalled on the store")

        started = time.monotonic()
        with pytest.raises(NotAccepted, match="the store is not keeping up"):
            system.submit(new_task(2))
        assert time.monotonic() - started < 1, "refused at once, not after a timeout"
        assert system.reader.list()[0] == []  # reads go on
    finally:
        lock.release()
        for thread in waiting:
            thread.join(30)
        system.stop()

    assert sorted(results) == ["task-0", "task-1"]
