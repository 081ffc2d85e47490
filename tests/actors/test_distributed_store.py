"""The StoreActor's distributed-mode protocol on the real PostgreSQL: the relay's leases, claims of
deliveries, and settled outcomes (messages sent straight to the actor, answers read from a recorder)."""

from __future__ import annotations

import time

import psycopg
import pytest

from actors.commit_signal import CommitSignal
from actors.db import utc_now
from actors.messages import (
    Claimed,
    ClaimTasks,
    CompleteTask,
    Delivered,
    InsertTask,
    Leased,
    LeaseDue,
    MarkPublished,
    NewTask,
    Receipt,
    RetryTask,
    Settle,
    Settled,
    TasksStored,
)
from actors.store import StoreActor
from tests.helpers import query, receive, start_recorder, wait_until

pytestmark = pytest.mark.backends("distributed")


def submit(store, task_id: str, priority: int = 0, run_at: float | None = None) -> None:
    queue, _ = start_recorder()
    committed = CommitSignal()
    task = NewTask(task_id, "uppercase", '{"text": "x"}', utc_now(), priority=priority, run_at=run_at)
    store.tell(InsertTask(task, committed, queue))
    committed.get(timeout=10)


def lease(store, limit: int = 10) -> Leased:
    relay, inbox = start_recorder()
    store.tell(LeaseDue(limit, relay))
    return receive(inbox, Leased)


def claim(store, *deliveries: Delivered) -> Claimed:
    queue, inbox = start_recorder()
    store.tell(ClaimTasks(deliveries, 3, queue))
    return receive(inbox, Claimed)


def delivered(task_id: str, lease: float, tag: int = 1, redelivered: bool = False) -> Delivered:
    return Delivered(task_id, Receipt(1, tag), redelivered, lease)


def test_due_tasks_are_leased_highest_priority_first_once_and_delayed_ones_when_due(store, database):
    submit(store, "low")
    submit(store, "high", priority=5)
    submit(store, "later", run_at=time.time() + 60)

    first = lease(store)
    assert first.task_ids == ("high", "low")
    assert first.unfinished == 3
    assert first.paused is False
    assert first.next_due_at is not None and first.next_due_at <= first.lease  # the delayed task, or a lease end
    assert lease(store).task_ids == (), "leased tasks are not leased again while their lease lasts"

    store.tell(MarkPublished(("high", "low"), first.lease))
    rows = wait_until(lambda: (r := query(database, "SELECT id, publish_after FROM tasks ORDER BY id")) and
                      r[0]["publish_after"] is None and r)  # fmt: skip
    assert [(row["id"], row["publish_after"] is None) for row in rows] == [
        ("high", True),
        ("later", False),
        ("low", True),
    ]


def test_a_delivery_is_claimed_once_and_a_finished_task_is_skipped(store, database):
    submit(store, "t")
    leased = lease(store)

    first = claim(store, delivered("t", leased.lease, tag=1))
    again = claim(store, delivered("t", leased.lease + 1, tag=2))  # a second publish of it, while it runs
    retried = claim(store, delivered("t", leased.lease, tag=1))  # the claim asked again (its commit was unknown)

    ((task, receipt),) = first.tasks
    assert (task.id, task.attempts, receipt.tag) == ("t", 0, 1)
    assert (again.tasks, again.skipped) == ((), (Receipt(1, 2),))
    assert retried.tasks == first.tasks, "the same attempt, not one more"

    queue, inbox = start_recorder()
    store.tell(Settle(CompleteTask("t", '{"output": "X"}', utc_now()), 1, receipt, queue))
    assert receive(inbox, Settled) == Settled((Receipt(1, 1),))
    late = claim(store, delivered("t", leased.lease, tag=3, redelivered=True))
    assert (late.tasks, late.skipped) == ((), (Receipt(1, 3),)), "a finished task never runs again"


def test_only_the_very_message_delivered_again_takes_over_a_running_task(store, database):
    submit(store, "t")
    leased = lease(store)
    claim(store, delivered("t", leased.lease))

    duplicate = claim(store, delivered("t", leased.lease + 1, tag=2, redelivered=True))  # another publish of it
    assert duplicate.tasks == ()

    taken = claim(store, delivered("t", leased.lease, tag=3, redelivered=True))  # its instance died
    ((task, _),) = taken.tasks
    assert task.attempts == 1, "the cut-off attempt counts: this is attempt 2"
    errors = query(database, "SELECT attempt, error FROM task_errors WHERE task_id = 't'")
    assert [(e["attempt"], e["error"]) for e in errors] == [(1, "interrupted: the instance running it stopped")]


def test_an_outcome_of_an_overtaken_attempt_is_acked_but_not_written(store, database):
    submit(store, "t")
    leased = lease(store)
    claim(store, delivered("t", leased.lease))
    claim(store, delivered("t", leased.lease, tag=2, redelivered=True))  # attempt 2 runs elsewhere

    queue, inbox = start_recorder()
    store.tell(Settle(CompleteTask("t", '{"output": "old"}', utc_now()), 1, Receipt(1, 1), queue))
    assert receive(inbox, Settled) == Settled((Receipt(1, 1),))
    row = query(database, "SELECT status, attempts, result FROM tasks WHERE id = 't'")[0]
    assert (row["status"], row["attempts"], row["result"]) == ("running", 2, None)


def test_a_retry_is_published_again_once_due_and_a_claim_waits_for_that(store, database):
    submit(store, "t")
    leased = lease(store)
    store.tell(MarkPublished(("t",), leased.lease))
    ((_, receipt),) = claim(store, delivered("t", leased.lease)).tasks
    queue, inbox = start_recorder()
    due = time.time() + 0.5
    store.tell(Settle(RetryTask("t", 1, "boom", due, utc_now()), 1, receipt, queue))
    receive(inbox, Settled)

    early = claim(store, delivered("t", leased.lease, tag=2))  # a stale copy before the backoff is over
    assert early.tasks == ()
    assert lease(store).task_ids == ()
    wait_until(lambda: lease(store).task_ids == ("t",), what="the retry to be due to publish again")


def test_a_stored_task_is_news_for_the_queue_as_in_the_embedded_mode(store, database):
    queue, inbox = start_recorder()
    committed = CommitSignal()
    store.tell(InsertTask(NewTask("t", "uppercase", "{}", utc_now()), committed, queue))
    committed.get(timeout=10)
    assert [task.id for task in receive(inbox, TasksStored).tasks] == ["t"]


def test_a_task_whose_message_was_lost_is_published_again(store, database):
    submit(store, "t")
    leased = lease(store)
    store.tell(MarkPublished(("t",), leased.lease))
    wait_until(lambda: query(database, "SELECT publish_after FROM tasks")[0]["publish_after"] is None)
    with psycopg.connect(database.url, autocommit=True) as conn:  # as if published 20 minutes ago, never delivered
        conn.execute("UPDATE tasks SET published_at = published_at - 1200")
    assert lease(store).task_ids == (), "the sweep runs once a minute: not in this store's next lease"

    store.stop()
    another = StoreActor.start(database)  # a store that has not swept yet

    assert lease(another).task_ids == ("t",)
