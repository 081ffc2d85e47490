"""RabbitLink: a connection to RabbitMQ, in the distributed mode (``queue.url``). Each instance has
two: one consumes and acks (``consumes=True``), the other measures the room and publishes, so that
publishes, each batch waiting for its commit, never hold up deliveries and acks.

pika's connections belong to the thread that opened them, so each link runs its own thread.
The queue asks it for work by method calls that only hand a request over (through pika's
``add_callback_threadsafe``, which wakes the thread); what comes back goes to the queue as
messages:

- ``measure_room()``  -> :class:`~actors.messages.RoomFor`: how many tasks the RabbitMQ queue
  should take now (``window`` less those it holds ready). The relay publishes no more, so the
  tasks waiting beyond it stay in PostgreSQL, where priorities order them.
- ``publish(ids, lease)`` -> :class:`~actors.messages.Published`, once RabbitMQ has taken
  them, as persistent messages whose body is the task's id and the lease it was published
  under (which tells a redelivery from a second publish). A batch is published in one AMQP
  transaction: at ``tx.commit-ok`` RabbitMQ has taken responsibility for them, as with a
  publisher confirm, and (returned, unroutable messages aside) they are durable. Confirms
  cost a round trip each, which a quorum queue answers only after its fsync: 1.8 ms per
  message here, against 0.13 ms in batches of 100.
- on connecting (again), if it consumes -> :class:`~actors.messages.Connected`.
- deliveries -> :class:`~actors.messages.Delivered`, at most ``prefetch`` unacked at a time
  (``basic.qos``); ``ack(receipts)`` acks them once their outcomes are committed.

Before the instance starts, :func:`check_broker` connects once: a login, virtual host or queue
that RabbitMQ refuses stops the start (:class:`BrokerRefused`); RabbitMQ down does not.

The queue is a durable quorum queue with a delivery limit, a guard against a message that
takes its consumers down every time. If the connection fails, the link logs it once, reconnects
with a backoff (0.5 s doubling to 5 s) and logs when it is back. Meanwhile publishes fail at
once (the relay publishes those tasks later), acks are dropped (RabbitMQ delivers those
messages again, and the store skips them as finished), and nothing is delivered. Deliveries
of an older connection cannot be acked on a new one; each connection is numbered, and the
receipts of another are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

import pika
import pika.exceptions
import pykka
from pika.adapters.blocking_connection import BlockingChannel

from actors.messages import Connected, Delivered, Published, Receipt, RoomFor

__all__ = ["DELIVERY_LIMIT", "BrokerRefused", "RabbitLink", "check_broker"]

logger = logging.getLogger(__name__)

DELIVERY_LIMIT = 20  # deliveries of one message before RabbitMQ drops it (quorum queues' x-delivery-limit)
RECONNECT_S = 0.5
RECONNECT_MAX_S = 5.0
HEARTBEAT_S = 30
LINK_ERRORS = (pika.exceptions.AMQPError, OSError)
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

# RabbitMQ refuses the configuration itself: trying again changes nothing.
REFUSALS = (
    pika.exceptions.ProbableAuthenticationError,  # the user or password
    pika.exceptions.ProbableAccessDeniedError,  # the virtual host
    pika.exceptions.ChannelClosedByBroker,  # the queue, declared before with other arguments (a classic queue)
)

# A request: the work to do on the channel, and what to tell the queue if there is no channel.
Request = tuple[Callable[[BlockingChannel], None], Callable[[], None] | None]


class BrokerRefused(Exception):
    """RabbitMQ refuses the configuration: the login, the virtual host, or the queue's declaration."""


def check_broker(url: str, queue: str) -> str | None:
    """Connect once, as the link will, before the instance starts. Raises :class:`BrokerRefused` if RabbitMQ
    refuses the configuration (the start stops there, rather than retrying for ever); returns why it could not
    be reached, or None: an instance starts while RabbitMQ is down, and its link connects once it is back."""
    parameters = _parameters(url)
    try:
        connection, _ = _open(parameters, queue, prefetch=1)
    except REFUSALS as e:
        raise BrokerRefused(
            f"RabbitMQ at {parameters.host}:{parameters.port} refused: {e}. Check queue.url (the user, password and"
            " virtual host) and queue.name (a queue of that name declared otherwise, not as a quorum queue)"
        ) from None
    except LINK_ERRORS as e:
        return f"{type(e).__name__}: {str(e) or repr(e)}"
    with contextlib.suppress(*LINK_ERRORS):
        connection.close()
    return None


def _parameters(url: str) -> pika.URLParameters:
    parameters = pika.URLParameters(url)
    parameters.heartbeat = HEARTBEAT_S
    parameters.connection_attempts = 1
    parameters.socket_timeout = 5
    return parameters


def _open(
    parameters: pika.URLParameters, queue: str, prefetch: int, *, publishes: bool = False
) -> tuple[pika.BlockingConnection, BlockingChannel]:
    """A connection and its channel, the queue declared and ``basic.qos`` set; if it ``publishes``, its
    channel is transactional."""
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        if publishes:
            channel.tx_select()
        channel.queue_declare(
            queue, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
        )
        channel.basic_qos(prefetch_count=prefetch)
    except BaseException:
        connection.close()
        raise
    return connection, channel


class RabbitLink:
    """Publishes, consumes and acks on one RabbitMQ connection, in a thread of its own."""

    def __init__(
        self, url: str, queue: str, prefetch: int, window: int, owner: pykka.ActorRef[Any], *, consumes: bool = True
    ) -> None:
        self._parameters = _parameters(url)
        self._consumes = consumes  # (False: it only measures the room and publishes)
        self._queue = queue
        self._prefetch = prefetch
        self._window = window
        self._owner = owner
        self._requests: SimpleQueue[Request] = SimpleQueue()
        self._connection: pika.BlockingConnection | None = None
        self._channel_number = 0  # which connection this is, since start
        self._stopping = threading.Event()
        name = "rabbitmq-consumer" if consumes else "rabbitmq-publisher"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.down: str | None = "not connected yet"  #: why there is no connection, while there is none
        self._failed_before = False
        self._returned: list[str] = []  # the bodies of messages RabbitMQ returned, unroutable

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection (RabbitMQ delivers its unacked messages again) and end the thread."""
        self._stopping.set()
        self._wake()
        self._thread.join(timeout)

    # --- requests, from the queue's thread --------------------------------------------------

    def measure_room(self) -> None:
        def measure(channel: BlockingChannel) -> None:
            ready = channel.queue_declare(self._queue, passive=True).method.message_count
            self._tell(RoomFor(max(0, self._window - ready)))

        self._request(measure, lambda: self._tell(RoomFor(0)))

    def publish(self, task_ids: tuple[str, ...], lease: float) -> None:
        def publish(channel: BlockingChannel) -> None:
            self._returned.clear()
            for task_id in task_ids:
                channel.basic_publish("", self._queue, f"{task_id} {lease!r}".encode(), PERSISTENT, mandatory=True)
            channel.tx_commit()  # RabbitMQ has them now (or has returned them first)
            assert self._connection is not None
            self._connection.process_data_events(time_limit=0)  # (the returns' callbacks)
            returned = {body.partition(" ")[0] for body in self._returned}
            if returned:
                logger.warning("RabbitMQ returned %d tasks, unroutable; they are published later", len(returned))
            # What was not committed is published again once its lease ends (on a connection error, all of
            # them: the refusal below says so, and a task published twice runs once).
            done = tuple(task_id for task_id in task_ids if task_id not in returned)
            self._tell(Published(done, tuple(returned), lease))

        self._request(publish, lambda: self._tell(Published((), task_ids, lease)))

    def ack(self, receipts: tuple[Receipt, ...]) -> None:
        def ack(channel: BlockingChannel) -> None:
            for receipt in receipts:
                if receipt.channel == self._channel_number:
                    channel.basic_ack(receipt.tag)

        self._request(ack, None)

    def _request(self, work: Callable[[BlockingChannel], None], refused: Callable[[], None] | None) -> None:
        if self._connection is None:  # refused at once, rather than kept for a connection that may not come
            if refused is not None:
                refused()
            return
        self._requests.put((work, refused))
        self._wake()

    def _wake(self) -> None:
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(*LINK_ERRORS):  # closed: the thread refuses the requests itself
                connection.add_callback_threadsafe(lambda: None)  # process_data_events returns, and serves

    def _tell(self, message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # the queue stopped: its unacked messages come again
            self._owner.tell(message)

    # --- the link's thread -------------------------------------------------------------------

    def _run(self) -> None:
        wait_s = RECONNECT_S
        while not self._stopping.is_set():
            try:
                self._connect()
                wait_s = RECONNECT_S
                self._serve_until_stopped()
            except Exception as e:  # the link reconnects; it never dies silently
                if not isinstance(e, LINK_ERRORS):
                    logger.exception("the RabbitMQ link failed; connecting again")
                self._lost(e)
                self._stopping.wait(wait_s)
                wait_s = min(RECONNECT_MAX_S, wait_s * 2)
        self._close()
        self._refuse_requests()

    def _connect(self) -> None:
        connection, channel = _open(self._parameters, self._queue, self._prefetch, publishes=not self._consumes)
        if not self._consumes:
            channel.add_on_return_callback(lambda _, __, ___, body: self._returned.append(body.decode()))
        self._channel_number += 1
        number = self._channel_number

        def delivered(_: Any, method: Any, __: Any, body: bytes) -> None:
            try:
                task_id, _, lease = body.decode().partition(" ")
                message = Delivered(task_id, Receipt(number, method.delivery_tag), method.redelivered, float(lease))
            except ValueError:  # not a message of ours: it would come back for ever
                logger.error("dropped a message that is not a task's (%r) from queue %s", body[:100], self._queue)
                channel.basic_ack(method.delivery_tag)
                return
            self._tell(message)

        if self._consumes:
            try:
                channel.basic_consume(self._queue, delivered)
            except BaseException:
                connection.close()
                raise
        self._connection = connection
        if self._failed_before:
            logger.warning("connected to RabbitMQ again (after: %s)", self.down)
        self.down = None
        self._channel = channel
        if self._consumes:
            self._tell(Connected(number))

    def _serve_until_stopped(self) -> None:
        assert self._connection is not None
        while not self._stopping.is_set():
            self._connection.process_data_events(time_limit=1)
            self._serve()

    def _serve(self) -> None:
        while True:
            try:
                work, refused = self._requests.get_nowait()
            except Empty:
                return
            try:
                work(self._channel)
            except BaseException:
                if refused is not None:  # the connection failed on the way: its asker still hears
                    refused()
                raise

    def _lost(self, error: BaseException) -> None:
        """Log the first failure of a connection (or of the first one), then nothing until it is back."""
        if self.down is None or not self._failed_before:
            self.down = f"{type(error).__name__}: {str(error) or repr(error)}"
            logger.error(
                "no connection to RabbitMQ at %s:%s (%s); tasks are still accepted into PostgreSQL and published"
                " once it is back; connecting again every %g to %g s",
                self._parameters.host,
                self._parameters.port,
                self.down,
                RECONNECT_S,
                RECONNECT_MAX_S,
            )  # (later errors say only that it is still down)
        self._failed_before = True
        self._close()
        self._refuse_requests()

    def _refuse_requests(self) -> None:
        while True:
            try:
                _, refused = self._requests.get_nowait()
            except Empty:
                return
            if refused is not None:
                refused()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(*LINK_ERRORS):
                connection.close()
