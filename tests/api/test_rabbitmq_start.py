"""Starting the distributed mode against a RabbitMQ that refuses its configuration (the start stops,
saying why) or that is down (the instance starts, and takes tasks into PostgreSQL meanwhile)."""

from __future__ import annotations

import contextlib
import logging
import socket

import pika
import pytest
from falcon import testing

from actors import start_system
from actors.rabbitmq import BrokerRefused
from api import create_app
from tests.servers import AMQP_URL

pytestmark = pytest.mark.backends("distributed")


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        (AMQP_URL.replace("guest:guest@", "guest:wrong@"), "ACCESS_REFUSED - Login was refused"),
        (AMQP_URL.rsplit("/", 1)[0] + "/no-such-vhost", "NOT_ALLOWED - vhost no-such-vhost not found"),
    ],
)
def test_a_login_or_virtual_host_that_rabbitmq_refuses_stops_the_start_saying_so(config, url, refused):
    with pytest.raises(BrokerRefused, match=refused) as raised:
        start_system(config.replace(queue={"url": url}))
    assert "Check queue.url" in str(raised.value)
    assert "wrong" not in str(raised.value), "no password in the message"


def test_a_queue_of_that_name_declared_otherwise_stops_the_start(config):
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        connection.channel().queue_declare(config.queue.name, durable=False, auto_delete=True)  # a classic queue
        with pytest.raises(BrokerRefused, match="PRECONDITION_FAILED - inequivalent arg"):
            start_system(config)
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()  # (the queue goes with it: auto_delete)


def test_with_rabbitmq_down_an_instance_starts_and_commits_submits_to_run_later(config, caplog):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = AMQP_URL.replace("@127.0.0.1:5672", f"@127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="actors.system"):
        system = start_system(config.replace(queue={"url": down}))
    try:
        client = testing.TestClient(create_app(system))
        submitted = client.simulate_post("/tasks", json={"action": "uppercase", "data": {"text": "later"}})
        health = client.simulate_get("/health")
    finally:
        system.stop()

    assert any("cannot be reached now" in record.getMessage() for record in caplog.records)
    assert (submitted.status_code, submitted.json["status"]) == (202, "queued")
    assert health.status_code == 200
    assert health.json["rabbitmq"].startswith("down: ")
