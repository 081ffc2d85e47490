"""The store under real SQLite faults: another process holding the write lock, a read-only file, a full database."""

from __future__ import annotations

import sqlite3
import time

import pytest

from actors.commit_signal import CommitSignal
from actors.db import utc_now
from actors.messages import (
    CompleteTask,
    FetchReady,
    InsertTask,
    Inspect,
    MarkRunning,
    Migrate,
    NewTask,
    ReadyTasks,
    TasksStored,
)
from actors.migration import MigrationActor
from actors.store import StoreActor, StoreError
from tests.helpers import WriteLockHolder, receive, row, set_immutable, start_recorder, wait_until


@pytest.fixture
def impatient_store(db_path):
    """A store that waits only 100 ms for another process's write lock."""
    MigrationActor.start(db_path).ask(Migrate(), timeout=10)
    return StoreActor.start(db_path, busy_timeout_ms=100)


def insert(store, queue, n: int) -> CommitSignal:
    committed = CommitSignal()
    store.tell(InsertTask(NewTask(f"task-{n}", "x", "{}", utc_now()), committed, queue))
    return committed


def test_an_insert_is_refused_while_another_process_holds_the_write_lock(impatient_store, db_path):
    queue, inbox = start_recorder()
    lock = WriteLockHolder(db_path)
    try:
        with pytest.raises(StoreError):
            insert(impatient_store, queue, 1).get(timeout=10)
    finally:
        lock.release()

    assert row(db_path, "task-1") is None
    insert(impatient_store, queue, 2).get(timeout=10)  # the fault cleared: accepted again
    assert row(db_path, "task-2")["status"] == "queued"
    assert [t.id for t in receive(inbox, TasksStored).tasks] == ["task-2"]


def test_status_updates_rolled_back_by_a_fault_are_written_once_it_clears(impatient_store, db_path):
    queue, _ = start_recorder()
    insert(impatient_store, queue, 1).get(timeout=10)
    lock = WriteLockHolder(db_path)
    impatient_store.tell(MarkRunning("task-1", utc_now()))
    impatient_store.tell(CompleteTask("task-1", '{"output": 1}', utc_now()))
    try:
        with pytest.raises(StoreError):  # a write behind the updates shows they have been tried
            insert(impatient_store, queue, 2).get(timeout=10)
        assert row(db_path, "task-1")["status"] == "queued"
    finally:
        lock.release()

    done = wait_until(lambda: (r := row(db_path, "task-1"))["status"] == "completed" and r, what="the kept updates")
    assert (done["attempts"], done["result"]) == (1, '{"output": 1}')


def test_a_fetch_that_fails_is_answered_with_nothing_and_a_time_to_ask_again(impatient_store, db_path):
    queue, inbox = start_recorder()
    lock = WriteLockHolder(db_path)
    try:
        impatient_store.tell(MarkRunning("nothing", utc_now()))  # an open write: the fetch must commit first
        impatient_store.tell(FetchReady(10, queue))
        reply = receive(inbox, ReadyTasks)
    finally:
        lock.release()

    assert reply.tasks == ()
    assert reply.next_due_at is not None


def test_a_full_database_refuses_inserts_and_accepts_them_again_when_space_is_freed(db_path):
    MigrationActor.start(db_path).ask(Migrate(), timeout=10)
    store = StoreActor.start(db_path, max_pages=40)
    queue, _ = start_recorder()
    big = "x" * 3000

    accepted, refused = [], 0
    for n in range(200):
        committed = CommitSignal()
        store.tell(InsertTask(NewTask(f"task-{n}", "x", f'{{"blob": "{big}"}}', utc_now()), committed, queue))
        try:
            committed.get(timeout=10)
            accepted.append(f"task-{n}")
        except StoreError:
            refused += 1
            if refused == 3:
                break

    assert refused == 3, "the database never filled up"
    assert all(row(db_path, task_id) is not None for task_id in accepted)
    conn = sqlite3.connect(db_path)
    conn.execute("DELETE FROM tasks WHERE id IN (?, ?, ?)", tuple(accepted[:3]))
    conn.commit()
    conn.close()
    committed = CommitSignal()
    store.tell(InsertTask(NewTask("after", "x", f'{{"blob": "{big}"}}', utc_now()), committed, queue))
    committed.get(timeout=10)
    assert row(db_path, "after") is not None


def test_a_lasting_fault_is_retried_with_a_backoff_logged_once_and_once_more_when_it_clears(db_path, caplog):
    MigrationActor.start(db_path).ask(Migrate(), timeout=10)
    store = StoreActor.start(db_path)
    queue, _ = start_recorder()
    insert(store, queue, 1).get(timeout=10)
    files = [db_path, db_path + "-wal"]
    set_immutable(files, True)  # read-only, even for root
    try:
        started = time.monotonic()
        store.tell(MarkRunning("task-1", utc_now()))  # an update that cannot be written, so is kept
        state = wait_until(
            lambda: (s := store.ask(Inspect(), timeout=5)).failed_writes >= 3 and s, what="three failed writes"
        )
        took = time.monotonic() - started
    finally:
        set_immutable(files, False)

    assert took >= 1.5, "the tries after the first wait 0.5 s, then 1 s: no busy loop"
    assert state.fault == "the store cannot write: disk I/O error"
    assert state.unsaved_updates == 1
    wait_until(lambda: store.ask(Inspect(), timeout=5).fault is None, what="the fault to clear by itself")
    assert row(db_path, "task-1")["status"] == "running"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "actors.store"]
    assert [level for level, _ in lines] == ["ERROR", "WARNING"], lines
    assert lines[0][1].startswith("the store cannot write: disk I/O error; new tasks are refused (503)")
    assert lines[1][1].startswith("the store writes again, after ")
