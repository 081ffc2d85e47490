"""BrokerQueueActor: the QueueActor of the distributed mode, fed by RabbitMQ instead of the
store's window. Many instances, each with its own, share one PostgreSQL and one RabbitMQ.

Protocol (besides the QueueActor's, which it keeps: Submit, acks and nacks, cancels, pause...)
    receives  :class:`~actors.messages.Connected` (link)  -> relays
              :class:`~actors.messages.RoomFor`   (link)  -> tells the store LeaseDue
              :class:`~actors.messages.Leased`    (store) -> has the link publish them; learns the
                                                            cluster's unfinished count and pause
              :class:`~actors.messages.Published` (link)  -> tells the store MarkPublished
              :class:`~actors.messages.Delivered` (link)  -> kept until a worker is free, then claimed
              :class:`~actors.messages.Claimed`   (store) -> dispatches them; acks the skipped
              :class:`~actors.messages.Settled`   (store) -> acks them: their outcomes are committed
              :class:`~actors.messages.Drain`     (shutdown) -> releases the claimed tasks not started
    sends     LeaseDue, MarkPublished, ClaimTasks, Started and Settle to its store; requests to its
              :class:`~actors.rabbitmq.RabbitLink`

How a task goes:

1. **Stored.** A submit is committed in PostgreSQL before its 202, due to publish at its due time
   (the outbox column ``publish_after``, kept by a trigger).
2. **Relayed.** Each instance's relay, one step at a time: ask RabbitMQ how much room its queue has
   (``queue.window`` less the messages it holds ready), lease that many due tasks in the store
   (highest priority first, skipping those another instance is leasing), publish them in one
   AMQP transaction (RabbitMQ has them at its commit), and mark them published. A lease that
   ends unpublished (the instance died, RabbitMQ was down) lets any instance publish them again.
   The relay steps on new tasks, on the next due time (delays, retries' backoff), when an outcome
   is acked after a step that filled the room, and every ``RELAY_EVERY_S``; on the way it learns
   the cluster's pause and backlog, and which of its tasks an instance was asked to cancel.
3. **Delivered and claimed.** RabbitMQ delivers at most ``QOS_PER_PREFETCH * prefetch`` unacked
   messages to the instance. The store claims them, up to ``prefetch`` ahead of the workers: a
   task still queued and due becomes ``running`` with one more attempt (its ``started_at`` is set
   when a worker takes it); one that is finished, cancelled or running elsewhere is skipped and
   its delivery acked. A task found ``running`` under this very message, now redelivered, was
   left by an instance that died: that attempt (started or only claimed) is recorded as
   interrupted, and the task runs again (or fails, out of attempts). After a reconnect, what the
   old connection held and no worker started is given back; the new connection delivers it again.
4. **Settled.** The outcome is written only if that attempt is still the task's latest (so an
   attempt overtaken by a redelivery cannot overwrite it), and the delivery is acked once it is
   committed. A retry is due again after its backoff and goes back through the relay.

Delivery is at least once: a task whose instance dies mid-run runs again elsewhere, and an
attempt cut off from RabbitMQ may run while its redelivery does; only the latest attempt's
outcome is kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from actors.db import epoch_now, utc_now
from actors.messages import (
    CancelMatching,
    CancelRunning,
    CancelTask,
    Claimed,
    ClaimTasks,
    CompleteTask,
    Connected,
    ControlResult,
    Delivered,
    Drain,
    FailTask,
    Leased,
    LeaseDue,
    MarkPublished,
    MatchingCancelled,
    Published,
    QueuedTask,
    Receipt,
    ReleaseClaim,
    Requeued,
    RetryTask,
    RoomFor,
    SavePaused,
    SetPaused,
    Settle,
    Settled,
    Started,
    TaskCancelled,
)
from actors.queue import InFlight, QueueActor
from actors.rabbitmq import RabbitLink

__all__ = ["QOS_PER_PREFETCH", "BrokerQueueActor", "StartLink"]

logger = logging.getLogger(__name__)

RELAY_EVERY_S = 1.0  # the relay steps at least this often: to publish what other instances left, and learn news
RELAY_GAP_S = 0.05  # ... and at most this often
CLAIM_RETRY_S = 0.5  # a claim the store could not write is tried again after this
# Tasks claimed and not finished, per place in flight (``prefetch``): those running, and as many claimed ahead,
# waiting for a worker (so the next ones are at hand when a worker is free, not a claim's commit away).
CLAIMED_PER_PREFETCH = 2
# RabbitMQ's basic.qos (unacked deliveries), per place in flight: the claimed ones, and as many again whose
# outcomes are being committed or that wait to be claimed.
QOS_PER_PREFETCH = 2 * CLAIMED_PER_PREFETCH

# (the queue, whether it consumes) -> a link, not started yet
StartLink = Callable[[pykka.ActorRef[Any], bool], RabbitLink]


class BrokerQueueActor(QueueActor):
    """A QueueActor whose ready tasks are RabbitMQ's deliveries, claimed in the store."""

    def __init__(self, *args: Any, link: StartLink, flow_store: pykka.ActorRef[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flow_store = flow_store  # writes the relay's leases, the claims and the outcomes
        self._make_link = link
        self._link: RabbitLink | None = None  # consumes and acks
        self._publisher: RabbitLink | None = None  # measures the room and publishes, on a connection of its own
        self._deliveries: deque[Delivered] = deque()  # delivered and not claimed yet
        self._claiming: tuple[Delivered, ...] = ()  # the claim under way
        self._claim_after = 0.0  # monotonic time before which a claim that failed is not tried again
        self._receipts: dict[str, Receipt] = {}  # claimed tasks (waiting for a worker, or in flight)
        self._relaying = False  # a relay step is under way
        self._relayed_at = -math.inf  # (monotonic) when the last one began
        self._relay_again = False  # something happened meanwhile that calls for another step
        self._room = 0  # how many tasks the relay step under way may publish
        self._more_in_store = False  # the last step filled the room: more tasks may wait to publish
        self._channel = 0  # the RabbitMQ connection's number: deliveries of older ones are redelivered
        self._pauses = 0  # pauses and resumes asked of this instance
        self._pauses_at_lease = 0  # ... when the lease under way was asked

    @property
    def link(self) -> RabbitLink:
        assert self._link is not None, "the queue is not started"
        return self._link

    @property
    def publisher(self) -> RabbitLink:
        assert self._publisher is not None, "the queue is not started"
        return self._publisher

    def broker_down(self) -> str | None:
        """Why there is no connection to RabbitMQ now (None: there is)."""
        return next((link.down for link in (self._link, self._publisher) if link is not None and link.down), None)

    def _recover(self) -> None:
        """Nothing to recover here: RabbitMQ delivers again what an instance left unacked. The relay publishes
        on a connection of its own, so that its publishes (each batch waiting for its commit) do not hold
        up the deliveries and acks of the tasks running here."""
        self._link = self._make_link(self.actor_ref, True)
        self._publisher = self._make_link(self.actor_ref, False)
        self._link.start()
        self._publisher.start()
        self._relay()

    def on_stop(self) -> None:
        self._stop_links()
        super().on_stop()

    def on_failure(self, *exc_info: Any) -> None:
        self._stop_links()
        super().on_failure(*exc_info)

    def _stop_links(self) -> None:
        for link in (self._link, self._publisher):
            if link is not None:
                link.stop()

    def on_receive(self, message: Any) -> Any:
        match message:
            case RoomFor(count):
                self._room = 0 if self._paused else count  # (paused: publish nothing, so priorities hold)
                self._pauses_at_lease = self._pauses
                self._flow_store.tell(LeaseDue(self._room, self._settings.max_attempts, self.actor_ref))
            case Connected(channel):
                self._channel = channel
                self._forget_older_deliveries()
                self._relay()
            case Leased():
                self._leased(message)
            case Published(published, failed, lease):
                if published:
                    self._flow_store.tell(MarkPublished(published, lease))
                if failed:
                    logger.warning("%d tasks not published now; they are published once their lease ends", len(failed))
                self._relay_done()
            case Delivered():
                self._deliveries.append(message)
            case Claimed(tasks, skipped, failed):
                self._claimed(tasks, skipped, failed)
            case Settled(receipts):
                self._settling -= len(receipts)
                self.link.ack(receipts)
                if self._more_in_store:
                    self._relay()
            case Drain():
                self._release_claimed()
                return super().on_receive(message)
            case _:
                return super().on_receive(message)
        self._dispatch()
        return None

    # --- the relay: committed tasks to RabbitMQ -----------------------------------------------

    def _relay(self) -> None:
        if self._relaying:
            self._relay_again = True
            return
        now = time.monotonic()
        if now < self._relayed_at + RELAY_GAP_S:  # (under load: one step for many new tasks, not one each)
            self._schedule_wake(epoch_now() + self._relayed_at + RELAY_GAP_S - now)
            return
        self._relaying, self._relay_again, self._relayed_at = True, False, now
        self.publisher.measure_room()

    def _relay_done(self) -> None:
        self._relaying = False
        if self._relay_again:
            self._relay()

    def _leased(self, leased: Leased) -> None:
        if leased.unfinished is not None:
            self._unfinished = leased.unfinished
        paused_here_since = self._pauses != self._pauses_at_lease  # then the store's answer is older than ours
        if leased.paused is not None and leased.paused != self._paused and not paused_here_since:
            self._paused = leased.paused
            logger.info("dispatching %s by another instance", "paused" if leased.paused else "resumed")
            if self._paused:
                self._release_claimed()
        for task_id in leased.cancel_asked:  # (asked of any instance; the task ends cancelled once it stops)
            if task_id not in self._cancelling:
                self._interrupt(task_id)
        next_due_at = math.inf if leased.next_due_at is None else leased.next_due_at
        self._schedule_wake(min(next_due_at, epoch_now() + RELAY_EVERY_S))
        self._more_in_store = 0 < self._room <= len(leased.task_ids)  # (no room: the timer looks again)
        if leased.task_ids:
            self.publisher.publish(leased.task_ids, leased.lease)
        else:
            self._relay_done()

    def _take_stored(self, tasks: tuple[QueuedTask, ...]) -> None:
        now = epoch_now()
        for task in tasks:
            if task.available_at > now:
                self._schedule_wake(task.available_at)
        if any(task.available_at <= now for task in tasks):
            self._relay()

    def _wake(self) -> None:
        self._wake_timer = self._wake_at = None
        self._relay()

    def _refetch(self) -> None:
        self._relay()

    def _control(
        self, message: CancelTask | TaskCancelled | SetPaused | CancelMatching | MatchingCancelled | Requeued
    ) -> None:
        if isinstance(message, Requeued):  # due now, in the store: the relay publishes them
            self._unfinished += message.count
            self._relay()
        elif isinstance(message, SetPaused):
            self._pauses += 1
            self._paused = message.paused
            # (Kept by the store that leases, so its next lease sees it: after a resume, the relay steps at once.)
            self._flow_store.tell(SavePaused(message.paused, message.answer))
            logger.info("dispatching %s", "paused" if message.paused else "resumed")
            if self._paused:  # (claimed ahead, they would show running all the while)
                self._release_claimed()
            else:
                self._relay()
        else:
            super()._control(message)

    # --- deliveries: claimed, run, settled ------------------------------------------------------

    def _refill(self) -> None:
        """Claim deliveries until ``CLAIMED_PER_PREFETCH * prefetch`` tasks are claimed here and not finished."""
        if self._claiming or not self._deliveries or self._draining or self._paused or self._holding:
            return
        if time.monotonic() < self._claim_after:
            return
        free = CLAIMED_PER_PREFETCH * self._settings.prefetch - len(self._in_flight) - len(self._ready)
        batch: list[Delivered] = []
        while free > len(batch) and self._deliveries:
            delivery = self._deliveries.popleft()
            if delivery.task_id in self._receipts:  # it runs here: the message came again on a new connection
                self._receipts[delivery.task_id] = delivery.receipt  # (its outcome is acked on that one)
            else:
                batch.append(delivery)
        if batch:
            self._claiming = tuple(batch)
            self._flow_store.tell(ClaimTasks(self._claiming, self._settings.max_attempts, self.actor_ref))

    def _claimed(
        self, tasks: tuple[tuple[QueuedTask, Receipt], ...], skipped: tuple[Receipt, ...], failed: tuple[Receipt, ...]
    ) -> None:
        claiming, self._claiming = self._claiming, ()
        for task, receipt in tasks:
            self._receipts[task.id] = receipt
            self._ready.add(task)
        if self._draining or self._paused:  # claimed while stopping or pausing: none of them starts now
            self._release_claimed()
        self._forget_older_deliveries()
        if skipped:
            self.link.ack(skipped)
        if failed:  # the store cannot write now: they wait here (unacked) and are claimed again later
            self._deliveries.extendleft(reversed(claiming))
            self._claim_after = time.monotonic() + CLAIM_RETRY_S
            self._schedule_wake(epoch_now() + CLAIM_RETRY_S)

    def _release_claimed(self) -> None:
        """Stopping or paused: the claimed tasks no worker has started go back to queued, as if never claimed;
        the relay publishes them again (with no attempt counted), for this instance or another."""
        while self._ready:
            self._release(self._ready.pop())

    def _release(self, task: QueuedTask) -> None:
        receipt = self._receipts.pop(task.id)
        self._settle_in_store(Settle(ReleaseClaim(task.id), task.attempts + 1, receipt, self.actor_ref))

    def _settle_in_store(self, settle: Settle) -> None:
        self._settling += 1
        self._flow_store.tell(settle)

    def _forget_older_deliveries(self) -> None:
        """After a reconnect, RabbitMQ delivers again what the old connection held: its deliveries not
        claimed are dropped, and its claimed tasks no worker has started are released (the ones running
        finish, and their outcomes are acked on the new connection, if it brings their message)."""
        self._deliveries = deque(d for d in self._deliveries if d.receipt.channel == self._channel)
        for task_id, receipt in list(self._receipts.items()):
            if receipt.channel != self._channel and task_id not in self._in_flight:
                task = self._ready.remove(task_id)
                assert task is not None, "a claimed task not in flight waits in the window"
                self._release(task)

    def _mark_running(self, task: QueuedTask) -> None:
        """(Claiming made it running; it may have waited for a worker since.)"""
        self._flow_store.tell(Started(task.id, task.attempts + 1, utc_now()))

    def _being_cancelled(self, task_id: str) -> bool:
        return False  # the window holds claimed tasks, which the store no longer cancels as queued

    def _write_outcome(self, flight: InFlight, update: CompleteTask | CancelRunning | RetryTask | FailTask) -> None:
        receipt = self._receipts.pop(flight.task.id)
        self._settle_in_store(Settle(update, flight.attempt, receipt, self.actor_ref))

    def _cancel(self, task_id: str, answer: pykka.Future[ControlResult]) -> None:
        if self._waiting_claimed(task_id):
            self._cancel_waiting(task_id, answer)
        else:
            super()._cancel(task_id, answer)

    def _interrupt(self, task_id: str, answer: pykka.Future[ControlResult] | None = None) -> bool:
        if self._waiting_claimed(task_id):  # (a bulk cancel names it as running)
            self._cancel_waiting(task_id, answer)
            return True
        return super()._interrupt(task_id, answer)

    def _interrupt_all(self, running: tuple[str, ...]) -> int:
        """The running tasks of a bulk cancel are interrupted here, or by the instances running them (the store
        has asked them to): all count as cancelled."""
        super()._interrupt_all(running)
        return len(running)

    def _waiting_claimed(self, task_id: str) -> bool:
        """Whether the task is claimed here (running, in the store) and waits for a worker."""
        return task_id in self._receipts and task_id not in self._in_flight

    def _cancel_waiting(self, task_id: str, answer: pykka.Future[ControlResult] | None) -> None:
        """A claimed task waiting for a worker (dispatching is paused or held) ends cancelled without running."""
        task = self._ready.remove(task_id)
        assert task is not None, "a claimed task not in flight waits in the window"
        receipt = self._receipts.pop(task_id)
        self._unfinished -= 1
        cancelled = CancelRunning(task_id, "cancelled before it ran", utc_now(), () if answer is None else (answer,))
        self._settle_in_store(Settle(cancelled, task.attempts + 1, receipt, self.actor_ref))
