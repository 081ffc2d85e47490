"""The real PostgreSQL and RabbitMQ of the distributed mode, for the tests: a schema and a queue of
each test's own, removed after it.

They run on the development and CI machines (see README, "Running the tests"); when one is not
running, the tests that need it fail with what to do, and are never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pika
import pika.exceptions
import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = ["AMQP_URL", "POSTGRES_URL", "postgres_schema", "rabbitmq_queue", "schema_url", "terminate_connections"]

POSTGRES_URL = os.environ.get("TASK_QUEUE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("TASK_QUEUE_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/%2F")
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect <version> main start (pg_lsclusters shows the version)"
START_RABBITMQ = "rabbitmq-server -detached"


def schema_url(schema: str) -> str:
    """The URL of the test database, with ``schema`` first on the search path; its connections are named
    after it (``application_name``), so a test can find them."""
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}&application_name={schema}"


def _postgres() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise AssertionError(f"PostgreSQL is not running at {POSTGRES_URL} ({e}); start it: {START_POSTGRES}") from e


def _rabbitmq() -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError as e:
        raise AssertionError(f"RabbitMQ is not running at {AMQP_URL} ({e!r}); start it: {START_RABBITMQ}") from e


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A new, empty schema; yields the URL that uses it. Dropped with everything in it afterwards."""
    schema = f"tq_test_{uuid.uuid4().hex[:12]}"
    with _postgres() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema_url(schema)
    finally:
        with _postgres() as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def rabbitmq_queue() -> Iterator[str]:
    """The name of a queue no one uses (the service declares it); deleted afterwards."""
    name = f"tq-test-{uuid.uuid4().hex[:12]}"
    _rabbitmq().close()  # fail now, with what to do, if RabbitMQ is not running
    try:
        yield name
    finally:
        connection = _rabbitmq()
        try:
            connection.channel().queue_delete(name)
        finally:
            connection.close()


def terminate_connections(url: str) -> int:
    """Terminate every connection to PostgreSQL made with ``url`` (``pg_terminate_backend``), as a
    server restart would; how many."""
    name = conninfo_to_dict(url)["application_name"]
    with _postgres() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
    return len(rows)
