from __future__ import annotations

import sqlite3
import time

import pytest

from actors.commit_signal import CommitSignal
from actors.db import utc_now
from actors.messages import (
    CompleteTask,
    FailTask,
    FetchReady,
    InsertTask,
    MarkRunning,
    NewTask,
    QueuedTask,
    ReadyTasks,
    Recovered,
    RequeueUnfinished,
    RetryTask,
    TasksStored,
)
from tests.helpers import receive, row, start_recorder, wait_until

pytestmark = pytest.mark.backends("embedded", "distributed")


def new_task(n: int) -> NewTask:
    return NewTask(f"task-{n}", "uppercase", f'{{"text": "t{n}"}}', utc_now())


def insert(store, queue, task: NewTask) -> CommitSignal:
    committed = CommitSignal()
    store.tell(InsertTask(task, committed, queue))
    return committed


def test_an_insert_is_committed_before_its_sender_hears_of_it(store, database):
    queue, inbox = start_recorder()

    insert(store, queue, new_task(1)).get(timeout=10)

    stored = row(database, "task-1")  # a connection of our own sees it: it is committed
    assert stored is not None
    assert (stored["status"], stored["action"], stored["attempts"]) == ("queued", "uppercase", 0)
    assert receive(inbox, TasksStored) == TasksStored((QueuedTask("task-1", "uppercase", '{"text": "t1"}', 0),))


@pytest.mark.backends("embedded")  # holds SQLite's write lock
def test_writes_that_arrive_together_share_one_commit(store, db_path):
    queue, inbox = start_recorder()
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: the store waits on its first write
    futures = [insert(store, queue, new_task(n)) for n in range(20)]
    blocker.execute("COMMIT")
    blocker.close()

    for future in futures:
        future.get(timeout=10)

    stored = receive(inbox, TasksStored)
    assert [t.id for t in stored.tasks] == [f"task-{n}" for n in range(20)]
    assert inbox.empty(), "one commit, so one TasksStored for all twenty"


def test_a_task_moves_through_running_and_completed(store, database):
    queue, _ = start_recorder()
    insert(store, queue, new_task(1)).get(timeout=10)

    store.tell(MarkRunning("task-1", "2026-01-01T00:00:00.000000Z"))
    store.tell(CompleteTask("task-1", '{"output": "T1"}', "2026-01-01T00:00:01.000000Z"))

    done = wait_until(lambda: (r := row(database, "task-1"))["status"] == "completed" and r, what="completed")
    assert done["attempts"] == 1
    assert done["result"] == '{"output": "T1"}'
    assert done["started_at"] == "2026-01-01T00:00:00.000000Z"
    assert done["processed_at"] == "2026-01-01T00:00:01.000000Z"


def test_a_retried_task_is_queued_again_and_a_failed_one_keeps_its_error(store, database):
    queue, _ = start_recorder()
    for n in (1, 2):
        insert(store, queue, new_task(n)).get(timeout=10)
        store.tell(MarkRunning(f"task-{n}", utc_now()))

    store.tell(RetryTask("task-1", 1, "RuntimeError: flaky", time.time() + 60, utc_now()))
    store.tell(FailTask("task-2", 1, "bad data", utc_now()))

    retried = wait_until(lambda: (r := row(database, "task-1"))["status"] == "queued" and r, what="retry")
    assert (retried["error"], retried["attempts"]) == ("RuntimeError: flaky", 1)
    failed = wait_until(lambda: (r := row(database, "task-2"))["status"] == "failed" and r, what="failure")
    assert (failed["error"], failed["result"]) == ("bad data", None)


def test_fetch_returns_ready_tasks_oldest_first_and_when_the_next_delayed_one_is_due(store):
    queue, inbox = start_recorder()
    for n in range(4):
        insert(store, queue, new_task(n)).get(timeout=10)
    due = time.time() + 60
    store.tell(MarkRunning("task-0", utc_now()))
    store.tell(RetryTask("task-0", 1, "flaky", due, utc_now()))  # not ready for a minute
    store.tell(MarkRunning("task-1", utc_now()))  # running, so not ready

    store.tell(FetchReady(10, queue))

    while not isinstance(reply := inbox.get(timeout=10), ReadyTasks):
        pass
    assert [t.id for t in reply.tasks] == ["task-2", "task-3"]
    assert reply.next_due_at == pytest.approx(due)


def test_fetch_returns_at_most_the_limit(store):
    queue, inbox = start_recorder()
    for n in range(5):
        insert(store, queue, new_task(n)).get(timeout=10)

    store.tell(FetchReady(2, queue))

    while not isinstance(reply := inbox.get(timeout=10), ReadyTasks):
        pass
    assert [t.id for t in reply.tasks] == ["task-0", "task-1"]


def test_unfinished_tasks_are_requeued_unless_they_ran_out_of_attempts(store, database):
    queue, inbox = start_recorder()
    for n in (1, 2, 3, 4):
        insert(store, queue, new_task(n)).get(timeout=10)
    store.tell(MarkRunning("task-1", utc_now()))
    for _ in range(3):
        store.tell(MarkRunning("task-2", utc_now()))
    store.tell(MarkRunning("task-4", utc_now()))
    store.tell(CompleteTask("task-4", "{}", utc_now()))

    store.tell(RequeueUnfinished(max_attempts=3, reply_to=queue))

    while not isinstance(reply := inbox.get(timeout=10), Recovered):
        pass
    assert reply == Recovered(unfinished=2)
    assert row(database, "task-2")["status"] == "failed"
    assert row(database, "task-1")["status"] == "queued"
    assert row(database, "task-3")["status"] == "queued"
    assert "interrupted" in row(database, "task-2")["error"]
    store.tell(FetchReady(10, queue))  # the requeued task keeps its turn, before task-3 stored after it
    while not isinstance(ready := inbox.get(timeout=10), ReadyTasks):
        pass
    assert [t.id for t in ready.tasks] == ["task-1", "task-3"]


def test_stopping_the_store_commits_what_it_holds(store, database):
    queue, _ = start_recorder()
    insert(store, queue, new_task(1)).get(timeout=10)
    store.tell(MarkRunning("task-1", utc_now()))

    store.stop(timeout=10)

    assert row(database, "task-1")["status"] == "running"


def test_the_store_outlives_a_queue_that_stopped_before_its_answer(store, database):
    queue, _ = start_recorder()
    queue.stop()

    store.tell(FetchReady(10, queue))
    insert(store, start_recorder()[0], new_task(1)).get(timeout=10)

    assert store.is_alive()
    assert row(database, "task-1") is not None
