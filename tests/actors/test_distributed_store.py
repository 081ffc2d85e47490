"""The StoreActor's distributed-mode protocol on the real PostgreSQL: the relay's leases, claims of
deliveries, and settled outcomes (messages sent straight to the actor, answers read from a recorder)."""

from __future__ import annotations

import time

import psycopg
import pykka
import pytest

import actors.store
from actors.commit_signal import CommitSignal
from actors.db import utc_now
from actors.messages import (
    CancelQueued,
    Claimed,
    ClaimTasks,
    CompleteTask,
    ControlResult,
    Delivered,
    InsertTask,
    Leased,
    LeaseDue,
    MarkPublished,
    NewTask,
    Receipt,
    ReleaseClaim,
    RetryTask,
    Settle,
    Settled,
    Started,
    TaskCancelled,
    TasksStored,
)
from actors.store import LOST_CLAIM, StoreActor
from tests.helpers import an_instance, query, receive, start_recorder, wait_until
from tests.servers import terminate_connections

pytestmark = pytest.mark.backends("distributed")


def submit(store, task_id: str, priority: int = 0, run_at: float | None = None) -> None:
    queue, _ = start_recorder()
    committed = CommitSignal()
    task = NewTask(task_id, "uppercase", '{"text": "x"}', utc_now(), priority=priority, run_at=run_at)
    store.tell(InsertTask(task, committed, queue))
    committed.get(timeout=10)


def lease(store, limit: int = 10) -> Leased:
    relay, inbox = start_recorder()
    store.tell(LeaseDue(limit, 3, relay))
    return receive(inbox, Leased)


def claim(store, *deliveries: Delivered, max_attempts: int = 3) -> Claimed:
    queue, inbox = start_recorder()
    store.tell(ClaimTasks(deliveries, max_attempts, queue))
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
    submit(store, "claimed ahead")
    leased = lease(store)
    claim(store, delivered("t", leased.lease), delivered("claimed ahead", leased.lease, tag=2))
    store.tell(Started("t", 1, utc_now()))  # a worker took it; the other waited for one

    duplicate = claim(store, delivered("t", leased.lease + 1, tag=3, redelivered=True))  # another publish of it
    assert duplicate.tasks == ()

    taken = claim(  # their instance died
        store,
        delivered("t", leased.lease, tag=4, redelivered=True),
        delivered("claimed ahead", leased.lease, tag=5, redelivered=True),
    )
    attempts_before = {task.id: task.attempts for task, _ in taken.tasks}
    assert attempts_before == {"t": 1, "claimed ahead": 1}, "a cut-off attempt counts, started or not"
    errors = query(database, "SELECT task_id, attempt, error FROM task_errors ORDER BY task_id")
    assert [(e["task_id"], e["attempt"], e["error"]) for e in errors] == [
        ("claimed ahead", 1, LOST_CLAIM),
        ("t", 1, "interrupted: the instance running it stopped"),
    ]


def test_an_outcome_of_an_overtaken_attempt_is_acked_but_not_written(store, database):
    submit(store, "started")
    submit(store, "claimed ahead")
    leased = lease(store)
    claim(store, delivered("started", leased.lease), delivered("claimed ahead", leased.lease, tag=2))
    store.tell(Started("started", 1, utc_now()))
    elsewhere = StoreActor.start(database, instance=an_instance("elsewhere"))  # this one was cut off
    claim(elsewhere, *(delivered(t, leased.lease, tag=3, redelivered=True) for t in ("started", "claimed ahead")))
    elsewhere.stop()

    queue, inbox = start_recorder()
    store.tell(Settle(CompleteTask("started", '{"output": "old"}', utc_now()), 1, Receipt(1, 1), queue))
    store.tell(Settle(ReleaseClaim("claimed ahead"), 1, Receipt(1, 2), queue))
    assert receive(inbox, Settled) == Settled((Receipt(1, 1), Receipt(1, 2)))
    rows = query(database, "SELECT id, status, attempts, result, claimed_by FROM tasks ORDER BY id")
    assert [(r["id"], r["status"], r["attempts"], r["result"], r["claimed_by"]) for r in rows] == [
        ("claimed ahead", "running", 2, None, "elsewhere"),
        ("started", "running", 2, None, "elsewhere"),
    ]


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


def test_a_task_whose_message_was_lost_is_published_again(store, database, monkeypatch):
    monkeypatch.setattr(actors.store, "INSTANCE_LOST_AFTER_S", 1.0)  # (a store sweeps once up that long)
    submit(store, "t")
    leased = lease(store)
    store.tell(MarkPublished(("t",), leased.lease))
    wait_until(lambda: query(database, "SELECT publish_after FROM tasks")[0]["publish_after"] is None)
    with psycopg.connect(database.url, autocommit=True) as conn:  # as if published 20 minutes ago, never delivered
        conn.execute("UPDATE tasks SET published_at = published_at - 1200")
    assert lease(store).task_ids == (), "the sweep runs once a minute: not in this store's next lease"

    store.stop()
    another = StoreActor.start(database, instance=an_instance("another"))  # a store that has not swept yet

    assert wait_until(lambda: lease(another).task_ids, what="the sweep of the new store") == ("t",)


def test_a_cancel_asked_of_another_instance_reaches_the_one_running_it_and_holds(store, database):
    for task_id in ("runs", "retries"):
        submit(store, task_id)
    leased = lease(store)
    claimed = {
        task.id: receipt for task, receipt in claim(store, *(delivered(t, leased.lease) for t in leased.task_ids)).tasks
    }
    other = StoreActor.start(database, instance=an_instance("other"))  # the store of the instance asked

    answers = {}
    for task_id in ("runs", "retries"):
        asker, inbox = start_recorder()
        answers[task_id] = pykka.ThreadingFuture()
        other.tell(CancelQueued(task_id, answers[task_id], asker))
        assert receive(inbox, TaskCancelled) == TaskCancelled(task_id, cancelled=False), (
            "not queued: not cancelled here"
        )
    other.stop()

    assert {answer.get(timeout=10) for answer in answers.values()} == {ControlResult("running", done=True)}
    assert set(lease(store).cancel_asked) == {"runs", "retries"}, "this instance hears of it in its next relay step"
    queue, inbox = start_recorder()  # the attempt ended before the interrupt came: its retry does not run
    store.tell(Settle(RetryTask("retries", 1, "boom", time.time(), utc_now()), 1, claimed["retries"], queue))
    receive(inbox, Settled)
    found = query(database, "SELECT status, error FROM tasks WHERE id = 'retries'")[0]
    assert (found["status"], found["error"]) == ("cancelled", "cancelled (asked of another instance)")


def test_tasks_left_running_by_an_instance_gone_are_taken_over_by_the_sweep(store, database, monkeypatch):
    monkeypatch.setattr(actors.store, "INSTANCE_LOST_AFTER_S", 3.0)  # (and a store sweeps once up that long)
    for task_id in ("left", "cancel asked", "last attempt", "never started", "alive"):
        submit(store, task_id)
    leased = lease(store)
    gone = StoreActor.start(database, instance=an_instance("gone"))
    claim(gone, *(delivered(t, leased.lease) for t in ("left", "cancel asked", "last attempt", "never started")))
    claim(store, delivered("alive", leased.lease))
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("UPDATE tasks SET started_at = '2026-01-01T00:00:00Z' WHERE id <> 'never started'")
        conn.execute("UPDATE tasks SET cancel_asked = true WHERE id = 'cancel asked'")
        conn.execute("UPDATE tasks SET attempts = 3 WHERE id = 'last attempt'")
    gone.stop()  # (its message lost too, as if RabbitMQ's queue had been deleted meanwhile)

    sweeper = StoreActor.start(database, instance=an_instance("sweeper"))
    leased = wait_until(lambda: lease(sweeper).task_ids, what="the sweep, once the sweeper has been up 3 s")
    assert set(leased) == {"left", "never started"}, "queued again, and published"

    rows = {r["id"]: r for r in query(database, "SELECT id, status, attempts, error FROM tasks")}
    assert {task_id: (r["status"], r["attempts"]) for task_id, r in rows.items()} == {
        "left": ("queued", 1),
        "cancel asked": ("cancelled", 1),
        "last attempt": ("failed", 3),
        "never started": ("queued", 1),
        "alive": ("running", 1),
    }
    errors = query(database, "SELECT task_id, error FROM task_errors ORDER BY task_id")
    assert [(e["task_id"], e["error"]) for e in errors] == [
        *((t, "interrupted: the instance running it stopped") for t in ("cancel asked", "last attempt", "left")),
        ("never started", LOST_CLAIM),
    ]
    assert [r["id"] for r in query(database, "SELECT id FROM instances ORDER BY id")] == ["sweeper", "this"]


def test_after_a_fault_a_store_sweeps_only_once_it_has_written_again_for_a_while(store, database, monkeypatch):
    """After an outage of PostgreSQL every instance's heartbeat is old: the first store to write again must not
    take over the live ones' tasks before they have been seen again."""
    monkeypatch.setattr(actors.store, "INSTANCE_LOST_AFTER_S", 3.0)
    sweeper = StoreActor.start(database, instance=an_instance("sweeper"))

    def seen_at() -> float | None:
        rows = query(database, "SELECT seen_at FROM instances WHERE id = 'sweeper'")
        return rows[0]["seen_at"] if rows else None

    first = wait_until(seen_at, what="the sweeper seen")
    wait_until(lambda: seen_at() >= first + 3.0, what="the sweeper up long enough to sweep")
    submit(store, "left")
    leased = lease(store)
    gone = StoreActor.start(database, instance=an_instance("gone"))
    claim(gone, delivered("left", leased.lease))
    gone.stop()  # (its row goes with it: what it left is the sweep's at once)

    assert terminate_connections(database.url) > 0  # the outage
    assert lease(sweeper).task_ids == (), "the lease during the fault finds nothing"
    wait_until(lambda: lease(sweeper).unfinished is not None, what="the store to write again")
    assert query(database, "SELECT status FROM tasks")[0]["status"] == "running", "not swept right after the fault"
    wait_until(lambda: lease(sweeper).task_ids == ("left",), what="the sweep, 3 s after the fault cleared")
