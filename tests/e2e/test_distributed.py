"""The distributed mode as users run it: several ``python run.py`` processes on different ports,
sharing one PostgreSQL and one RabbitMQ (the real servers of this machine), over real HTTP."""

from __future__ import annotations

import itertools
import re
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.e2e.service import Service
from tests.helpers import query, wait_until
from tests.servers import AMQP_URL, postgres_schema, rabbitmq_queue

COMPLETED_LINE = re.compile(r"task (\S+) \S+ attempt \d+ completed")


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    """A PostgreSQL URL (on a schema of the test's own) and a RabbitMQ queue name, removed afterwards."""
    with postgres_schema() as url, rabbitmq_queue() as queue:
        yield url, queue


def start_instances(tmp_path: Path, servers: tuple[str, str], count: int, *flags: str) -> list[Service]:
    """``count`` instances started together (so their migrations race), each ready."""
    url, queue = servers
    env = {"TASK_QUEUE_STORE_URL": url, "TASK_QUEUE_QUEUE_URL": AMQP_URL, "TASK_QUEUE_QUEUE_NAME": queue}
    instances = [
        Service(str(tmp_path / "unused.db"), tmp_path / f"instance-{n}.log", *flags, env=env) for n in range(count)
    ]
    for instance in instances:
        instance.launch()
    for instance in instances:
        instance.wait_ready()
    return instances


def statuses(url: str) -> Counter[str]:
    return Counter(row["status"] for row in query(url, "SELECT status FROM tasks"))


def test_three_instances_share_the_work_and_a_killed_one_loses_nothing(tmp_path, servers):
    url, _ = servers
    with ExitStack() as stack:
        instances = start_instances(tmp_path, servers, 3, "--work-delay-ms", "150")
        for instance in instances:
            stack.callback(instance.kill)
        logs = "".join(instance.log() for instance in instances)
        assert logs.count("applied schema migration 3") == 1, "one instance migrates; the others find it done"

        # N tasks submitted across the three, each through one of them, all completed once.
        submitted = [instance.submit({"action": "uppercase", "data": {"text": f"t{n}"}})
                     for n, instance in zip(range(90), itertools.cycle(instances))]  # fmt: skip
        wait_until(lambda: statuses(url)["completed"] == 90, timeout=60, what="the 90 tasks to complete")
        rows = query(url, "SELECT id, attempts, result FROM tasks")
        assert sorted(row["id"] for row in rows) == sorted(submitted)
        assert {row["attempts"] for row in rows} == {1}

        def finished_lines() -> Counter[str] | None:  # (log lines are written within 0.2 s)
            lines = Counter(task_id for instance in instances for task_id in COMPLETED_LINE.findall(instance.log()))
            return lines if set(lines) == set(submitted) else None

        assert set(wait_until(finished_lines, what="a log line for each task").values()) == {1}, "each ran once"
        ran_on = {n for n, instance in enumerate(instances) if COMPLETED_LINE.search(instance.log())}
        assert ran_on == {0, 1, 2}, "every instance took a share"

        # One instance is killed while it runs tasks: the others finish them, with one more attempt.
        late = [instances[0].submit({"action": "uppercase", "data": {"text": "late"}}) for _ in range(30)]
        victim = instances[2]
        wait_until(lambda: victim.request("GET", "/health")[1]["in_flight"] > 0, what="the victim to run tasks")
        victim.stop(signal.SIGKILL)
        wait_until(lambda: statuses(url)["completed"] == 120, timeout=60, what="every task to complete")

        rows = [row for row in query(url, "SELECT id, attempts FROM tasks") if row["id"] in late]
        interrupted = query(url, "SELECT task_id, error FROM task_errors")
        assert {row["error"] for row in interrupted} == {"interrupted: the instance running it stopped"}
        assert 1 <= len(interrupted) <= 5, "the victim held at most prefetch (5) tasks"
        again = {row["id"] for row in rows if row["attempts"] == 2}
        assert again == {row["task_id"] for row in interrupted}, "each task cut off shows one more attempt"
        assert statuses(url) == Counter({"completed": 120})
