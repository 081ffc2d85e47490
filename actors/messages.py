"""Every message the actors exchange, as small immutable dataclasses.

Task data travels as JSON text (``payload``, ``result``), exactly as it is stored, so a
message never holds a mutable object that two threads could share. ``reply_to`` fields
name the actor that gets the answer; ``committed`` fields are the futures a caller at the
edge of the system (the HTTP resource, start-up, a test) waits on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pykka import ActorRef, Future

from actors.commit_signal import CommitSignal
from actors.db import TaskFilter

__all__ = [
    "Ack",
    "BulkProgress",
    "CancelMatching",
    "CancelQueued",
    "CancelQueuedMatching",
    "CancelRunning",
    "CancelTask",
    "ClaimTasks",
    "Claimed",
    "CompleteTask",
    "Connected",
    "ControlResult",
    "DeleteTask",
    "Delivered",
    "Drain",
    "Execute",
    "FailTask",
    "FetchReady",
    "FileMoved",
    "Flush",
    "InsertTask",
    "Inspect",
    "Instance",
    "LeaseDue",
    "Leased",
    "MarkPublished",
    "MarkRunning",
    "MatchingCancelled",
    "Migrate",
    "Nack",
    "NewTask",
    "Prune",
    "Published",
    "QueueState",
    "QueuedTask",
    "ReadyTasks",
    "Receipt",
    "Recovered",
    "ReleaseClaim",
    "RequeueUnfinished",
    "Requeued",
    "RetryFinished",
    "RetryMatching",
    "RetryTask",
    "RetryWrites",
    "RoomFor",
    "SavePaused",
    "SetPaused",
    "Settle",
    "Settled",
    "Started",
    "StoreState",
    "Submit",
    "TaskCancelled",
    "TasksStored",
    "Tick",
    "Wake",
    "WorkerFailed",
]


# --- the task as it moves through the system -------------------------------------------


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task accepted by the API and not yet stored."""

    id: str  #: uuid4 as text
    action: str  #: name of the action in the registry
    payload: str  #: the task's ``data`` object as JSON text
    created_at: str  #: ISO 8601 UTC time the request arrived
    idempotency_key: str | None = None  #: the client's key: the same key and request give the same task
    request_hash: str | None = None  #: a digest of the request, to tell the same request from another
    priority: int = 0  #: higher runs first among ready tasks
    run_at: float | None = None  #: epoch seconds before which it does not run; None: now


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """A stored task that is queued: ready to run, or due later (``available_at``)."""

    id: str
    action: str
    payload: str
    attempts: int  #: attempts made so far (0 for a new task)
    priority: int = 0
    available_at: float = 0.0  #: epoch seconds when it is due (0 or past: ready; later: it waits in the store)


# --- control of one task, from an edge ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlResult:
    """The answer to a request about one task (cancel, retry, delete)."""

    status: str | None  #: the task's status now (after the request, if it was done); None: no such task
    done: bool  #: False when the task's status does not allow the request


@dataclass(frozen=True, slots=True)
class CancelTask:
    """To the queue: cancel the task if it is queued or running; answer a :class:`ControlResult`."""

    task_id: str
    answer: Future[ControlResult]


@dataclass(frozen=True, slots=True)
class RetryFinished:
    """To the store: queue a failed or cancelled task again, as a new series of attempts; answer a
    :class:`ControlResult` and tell ``reply_to`` (the queue) :class:`TasksStored`."""

    task_id: str
    answer: Future[ControlResult]
    reply_to: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class DeleteTask:
    """To the store: delete a finished task and its errors; answer a :class:`ControlResult`."""

    task_id: str
    answer: Future[ControlResult]


@dataclass(frozen=True, slots=True)
class RetryMatching:
    """To the store: queue again every failed or cancelled task the filter matches (its statuses are
    some of those two), in batches; answer how many, and tell ``reply_to`` (the queue)
    :class:`Requeued` after each batch."""

    filters: TaskFilter
    answer: Future[int]
    reply_to: ActorRef[Any]
    progress: BulkProgress | None = None  #: set by the store, which sends itself the next batch


@dataclass(frozen=True, slots=True)
class BulkProgress:
    """How far a bulk request has gone: the store works through its tasks a batch at a time."""

    upto_seq: int  #: tasks stored after the request began are left alone (these two say which)
    upto_created_at: str
    statuses: tuple[str, ...]  #: the statuses still to go through, the current one first
    after: tuple[str, int] | None  #: (created_at, seq) of the last task done in the current status
    done: int  #: tasks changed so far, every one of them committed


@dataclass(frozen=True, slots=True)
class CancelMatching:
    """To the queue: cancel every queued or running task the filter matches (its statuses are some of
    those two); answer how many."""

    filters: TaskFilter
    answer: Future[int]


@dataclass(frozen=True, slots=True)
class SetPaused:
    """To the queue: start nothing new while ``paused`` (submits are still committed), from now on;
    the queue has the store save it, and the store answers once that is committed."""

    paused: bool
    answer: Future[bool]


@dataclass(frozen=True, slots=True)
class SavePaused:
    """From the queue, to the store: keep ``paused`` for the next start; answer it after the commit."""

    paused: bool
    answer: Future[bool]


# --- to the QueueActor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    """Persist ``task`` and run it; ``committed`` is set once the task is committed."""

    task: NewTask
    committed: CommitSignal


@dataclass(frozen=True, slots=True)
class TasksStored:
    """From the store: these tasks are committed and ready to run."""

    tasks: tuple[QueuedTask, ...]


@dataclass(frozen=True, slots=True)
class ReadyTasks:
    """From the store, answering :class:`FetchReady`."""

    tasks: tuple[QueuedTask, ...]  #: in the order they run; fewer than asked means none are left
    next_due_at: float | None  #: epoch seconds when the next delayed task (or retry) becomes due


@dataclass(frozen=True, slots=True)
class Recovered:
    """From the store, answering :class:`RequeueUnfinished`."""

    unfinished: int  #: tasks queued or running (none of them committed after the requeue)


@dataclass(frozen=True, slots=True)
class Ack:
    """From a worker: the task succeeded."""

    task_id: str
    attempt: int  #: which attempt this answers; a late answer to an earlier one is ignored
    result: str  #: the result object as JSON text
    duration_s: float = field(default=0.0, compare=False)  #: how long the attempt ran, for logs and metrics


@dataclass(frozen=True, slots=True)
class Nack:
    """From a worker: the task failed."""

    task_id: str
    attempt: int
    error: str
    retryable: bool  #: False when retrying cannot help (the data is unusable)
    duration_s: float = field(default=0.0, compare=False)
    traceback: str | None = field(default=None, compare=False)  #: of an unexpected exception, for the log


@dataclass(frozen=True, slots=True)
class Requeued:
    """From the store, after a batch of :class:`RetryMatching`: this many tasks are queued again."""

    count: int
    top_priority: int  #: the highest priority among them


@dataclass(frozen=True, slots=True)
class MatchingCancelled:
    """From the store, answering :class:`CancelQueuedMatching`."""

    cancelled: int  #: queued tasks now cancelled (committed, even when ``written`` is False)
    running: tuple[str, ...]  #: the ids of the running tasks the filter matches, for the queue to interrupt
    answer: Future[int]  #: the asker's, for the queue to answer (the store has, if it could not write)
    written: bool  #: False: the store could not go on (a fault, or it stopped); the asker has been told


@dataclass(frozen=True, slots=True)
class TaskCancelled:
    """From the store, answering :class:`CancelQueued`: whether the task is now cancelled."""

    task_id: str
    cancelled: bool


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """From a worker that is dying: the queue, its supervisor, starts another."""

    worker: ActorRef[Any]
    error: str


@dataclass(frozen=True, slots=True)
class Wake:
    """From the queue's own timer: a delayed task or retry is due now."""


@dataclass(frozen=True, slots=True)
class Drain:
    """From shutdown, by ask: dispatch nothing more; reply the workers, for shutdown to stop."""


@dataclass(frozen=True, slots=True)
class Inspect:
    """From an edge (health, tests), by ask: the queue replies a :class:`QueueState`, the store a
    :class:`StoreState`."""


@dataclass(frozen=True, slots=True)
class QueueState:
    """What the queue holds right now."""

    ready: int  #: tasks in the in-memory window
    in_flight: int  #: tasks handed to workers and not yet acked or nacked
    backlog: bool  #: whether ready tasks may be waiting in the store beyond the window
    draining: bool
    paused: bool  #: dispatching nothing new (see SetPaused)
    cancelling: int  #: tasks in flight whose cancel is under way
    workers: int  #: workers alive in the pool
    worker_restarts: int  #: workers replaced since start
    unfinished: int  #: committed tasks not yet completed or failed (the backlog)
    finished_per_minute: tuple[int, ...] = ()  #: tasks finished in each of the last 60 minutes, oldest first
    broker_down: str | None = None  #: why there is no connection to RabbitMQ now (distributed mode)
    settling: int = 0  #: outcomes sent to the store and not yet acked to RabbitMQ (distributed mode)


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the store is going through right now."""

    fault: str | None  #: why the store cannot write, while it cannot
    unsaved_updates: int  #: status updates a fault rolled back, waiting to be written
    failed_writes: int  #: writes tried and failed since the fault began


# --- to a WorkerActor ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Execute:
    """Run ``task`` and reply :class:`Ack` or :class:`Nack` to ``reply_to``."""

    task: QueuedTask
    reply_to: ActorRef[Any]
    dispatch: int = 0  #: the queue's number for this hand-over; a cancel names it, so an old one matches nothing


# --- to the StoreActor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InsertTask:
    """Store a new task; on commit set ``committed`` and tell ``reply_to`` :class:`TasksStored`.

    With an idempotency key already used within the window, nothing is stored: ``committed``
    is set to the earlier task's id (once the earlier one is committed), or refused with
    ``IdempotencyConflict`` if the request differs."""

    task: NewTask
    committed: CommitSignal
    reply_to: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class MarkRunning:
    """The task was handed to a worker: status ``running``, one more attempt."""

    task_id: str
    started_at: str


@dataclass(frozen=True, slots=True)
class CompleteTask:
    """The task succeeded: status ``completed`` with its result."""

    task_id: str
    result: str
    processed_at: str


@dataclass(frozen=True, slots=True)
class RetryTask:
    """The task failed and will be retried: status ``queued`` again, ready at ``available_at``."""

    task_id: str
    attempt: int  #: the attempt that failed; its error is kept with its number
    error: str
    available_at: float  #: epoch seconds
    failed_at: str


@dataclass(frozen=True, slots=True)
class FailTask:
    """The task failed for good (the dead letter): status ``failed`` with its last error."""

    task_id: str
    attempt: int
    error: str
    processed_at: str


@dataclass(frozen=True, slots=True)
class CancelQueued:
    """From the queue: cancel the task if it is queued; answer ``answer`` after the commit and tell
    ``reply_to`` :class:`TaskCancelled`."""

    task_id: str
    answer: Future[ControlResult]
    reply_to: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class CancelQueuedMatching:
    """From the queue, which dispatches nothing until the answer: cancel the queued tasks the filter
    matches, in batches, and after the last commit tell ``reply_to`` :class:`MatchingCancelled`."""

    filters: TaskFilter
    answer: Future[int]
    reply_to: ActorRef[Any]
    progress: BulkProgress | None = None


@dataclass(frozen=True, slots=True)
class CancelRunning:
    """From the queue: the task was interrupted by a cancel; status ``cancelled``, answer after commit."""

    task_id: str
    error: str  #: how its attempt ended ("cancelled while it ran", "cancelled before it ran", ...)
    processed_at: str
    answers: tuple[Future[ControlResult], ...]  #: one for each cancel asked while it ran


@dataclass(frozen=True, slots=True)
class RequeueUnfinished:
    """At start-up: tasks a previous run left ``running`` become ``queued`` again; reply Recovered."""

    max_attempts: int  #: a task interrupted this many times is failed instead
    reply_to: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class FetchReady:
    """Reply :class:`ReadyTasks` with up to ``limit`` queued tasks that are ready now."""

    limit: int
    reply_to: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Flush:
    """The store's note to itself: commit what has been written since the last commit."""


@dataclass(frozen=True, slots=True)
class FileMoved:
    """The store's note to itself, found between writes: the database file is not the one it writes; stop."""


@dataclass(frozen=True, slots=True)
class Prune:
    """The store's timer, with a retention set: delete a batch of finished tasks older than it."""


@dataclass(frozen=True, slots=True)
class RetryWrites:
    """The store's timer while a fault lasts: write again what it rolled back, or a probe."""


# --- the distributed mode: the queue, RabbitMQ and the store ------------------------------


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a delivery of RabbitMQ came from, to acknowledge it there."""

    channel: int  #: which connection's channel delivered it (numbered); an older one's cannot be acked
    tag: int  #: its delivery tag on that channel


@dataclass(frozen=True, slots=True)
class LeaseDue:
    """The relay's step: take up to ``limit`` tasks due to be published, highest priority first, for a
    while (other instances skip them meanwhile); reply :class:`Leased`."""

    limit: int
    max_attempts: int  #: (for the sweep: a task its instance left running fails after this many attempts)
    reply_to: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Leased:
    """The tasks to publish now, and what the queue learns of the whole cluster on the way."""

    task_ids: tuple[str, ...]
    lease: float  #: the lease's end, which MarkPublished names
    next_due_at: float | None  #: when the next task becomes due to publish (None: none waits)
    unfinished: int | None  #: tasks queued or running, in every instance (None: not counted this time)
    paused: bool | None  #: whether dispatching is paused (by any instance)
    cancel_asked: tuple[str, ...] = ()  #: tasks running here that an instance (any) was asked to cancel


@dataclass(frozen=True, slots=True)
class Instance:
    """(Distributed mode) this instance, as the ``instances`` table shows it."""

    id: str
    host: str
    pid: int
    started_at: str


@dataclass(frozen=True, slots=True)
class RoomFor:
    """From the link: how many more tasks RabbitMQ's queue should take now (``queue.window`` less
    those it holds ready)."""

    count: int


@dataclass(frozen=True, slots=True)
class Connected:
    """From the link: it is connected to RabbitMQ (at start, or again after losing it)."""

    channel: int  #: the connection's number: deliveries of older ones are no longer this instance's


@dataclass(frozen=True, slots=True)
class Published:
    """From the link: RabbitMQ took these tasks (``published``: committed) or did not take them."""

    published: tuple[str, ...]
    failed: tuple[str, ...]
    lease: float


@dataclass(frozen=True, slots=True)
class MarkPublished:
    """To the store: these tasks are in RabbitMQ; none is to be published again (unless it became due
    again since: its lease is no longer ``lease``)."""

    task_ids: tuple[str, ...]
    lease: float


@dataclass(frozen=True, slots=True)
class Delivered:
    """From the link: RabbitMQ delivered a task to this instance."""

    task_id: str
    receipt: Receipt
    redelivered: bool  #: delivered before (to an instance that died, or that gave it back)
    lease: float  #: the relay's lease it was published under: which publish of the task this is


@dataclass(frozen=True, slots=True)
class Started:
    """To the store: a claimed task was handed to a worker (it may have waited for one since its claim)."""

    task_id: str
    attempt: int
    started_at: str


@dataclass(frozen=True, slots=True)
class ClaimTasks:
    """To the store: start these deliveries' tasks if they are still to run; reply :class:`Claimed`.

    A task is claimed when it is queued and due, or running under this very message, now
    ``redelivered`` (the instance it was delivered to died: that attempt is recorded as
    interrupted, and a task out of attempts fails instead). A task running under another
    publish of it (a duplicate) is left to its instance."""

    deliveries: tuple[Delivered, ...]
    max_attempts: int
    reply_to: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Claimed:
    """The claimed tasks (now ``running``, with their attempt counted) with their receipts, and the
    receipts of the deliveries not to run (finished, cancelled, or run elsewhere): to ack as they are.
    ``failed``: the store could not write; the queue keeps those deliveries and claims them again later."""

    tasks: tuple[tuple[QueuedTask, Receipt], ...]
    skipped: tuple[Receipt, ...]
    failed: tuple[Receipt, ...] = ()


@dataclass(frozen=True, slots=True)
class ReleaseClaim:
    """A claimed task that did not start (the instance is stopping) is queued again, its attempt uncounted."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Settle:
    """To the store: write how a delivered task's attempt ended (if that attempt is still the task's
    latest), then tell ``reply_to`` :class:`Settled`, so its delivery is acked only once committed."""

    update: CompleteTask | RetryTask | FailTask | CancelRunning | ReleaseClaim
    attempt: int
    receipt: Receipt
    reply_to: ActorRef[Any]


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcomes of these deliveries are committed: ack them."""

    receipts: tuple[Receipt, ...]


@dataclass(frozen=True, slots=True)
class Tick:
    """The store's timer, on PostgreSQL: fold the count changes into the totals, and (with an instance)
    record that the instance is alive."""


# --- to the MigrationActor -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migrate:
    """Apply every pending migration, reply the schema version, then stop."""
