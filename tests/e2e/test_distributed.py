"""The distributed mode as users run it: several ``python run.py`` processes on different ports,
sharing one PostgreSQL and one RabbitMQ (the real servers of this machine), over real HTTP."""

from __future__ import annotations

import itertools
import re
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from actors.store import LOST_ATTEMPT, LOST_CLAIM
from tests.e2e.service import Service
from tests.helpers import query, wait_until
from tests.servers import AMQP_URL, postgres_schema, rabbitmq_queue, terminate_connections

COMPLETED_LINE = re.compile(r"task (\S+) \S+ attempt \d+ completed")


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    """A PostgreSQL URL (on a schema of the test's own) and a RabbitMQ queue name, removed afterwards."""
    with postgres_schema() as url, rabbitmq_queue() as queue:
        yield url, queue


def start_instances(
    stack: ExitStack, tmp_path: Path, servers: tuple[str, str], count: int, *flags: str
) -> list[Service]:
    """``count`` instances started together (so their migrations race), each ready; ``stack`` kills them."""
    url, queue = servers
    env = {"TASK_QUEUE_STORE_URL": url, "TASK_QUEUE_QUEUE_URL": AMQP_URL, "TASK_QUEUE_QUEUE_NAME": queue}
    instances = [
        Service(str(tmp_path / "unused.db"), tmp_path / f"instance-{n}.log", *flags, env=env) for n in range(count)
    ]
    for instance in instances:
        stack.callback(instance.kill)
        instance.launch()
    for instance in instances:
        instance.wait_ready()
    return instances


def statuses(url: str) -> Counter[str]:
    return Counter(row["status"] for row in query(url, "SELECT status FROM tasks"))


def test_three_instances_share_the_work_and_a_killed_one_loses_nothing(tmp_path, servers):
    url, _ = servers
    with ExitStack() as stack:
        instances = start_instances(stack, tmp_path, servers, 3, "--work-delay-ms", "150")
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
        assert {row["error"] for row in interrupted} <= {LOST_ATTEMPT, LOST_CLAIM}
        # (its 5 places in flight, and as many tasks claimed ahead: actors.broker_queue.CLAIMED_PER_PREFETCH)
        assert 1 <= len(interrupted) <= 10, "the victim held at most 2 x prefetch (10) tasks claimed"
        again = {row["id"] for row in rows if row["attempts"] == 2}
        assert again == {row["task_id"] for row in interrupted}, "each task cut off shows one more attempt"
        assert statuses(url) == Counter({"completed": 120})


class Load(threading.Thread):
    """Submits tasks round-robin to the instances as fast as they answer, keeping the ids answered 202."""

    def __init__(self, instances: list[Service]) -> None:
        super().__init__(name="load", daemon=True)
        self._instances = instances
        self._stopping = threading.Event()
        self.accepted: list[str] = []
        self.refused: Counter[int] = Counter()
        self.maybe: list[str] = []  #: answered 503 with the id to look up: may be stored or not

    def run(self) -> None:
        for n in itertools.count():
            if self._stopping.is_set():
                return
            instance = self._instances[n % len(self._instances)]
            status, answer, _ = instance.call("POST", "/tasks", {"action": "uppercase", "data": {"text": str(n)}})
            if status == 202:
                self.accepted.append(answer["id"])
            elif "id" in answer:  # the outcome is unknown (the connection was lost during the commit)
                self.maybe.append(answer["id"])
            else:
                self.refused[status] += 1

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)

    def wait_for_more(self, count: int, what: str) -> None:
        target = len(self.accepted) + count
        wait_until(lambda: len(self.accepted) >= target, timeout=30, what=f"{count} more tasks accepted {what}")


def rabbitmq_status(instance: Service) -> str:
    return instance.request("GET", "/health")[1].get("rabbitmq", "")


def test_every_202_completes_through_a_rabbitmq_restart_and_killed_database_connections(tmp_path, servers):
    url, _ = servers
    with ExitStack() as stack:
        instances = start_instances(stack, tmp_path, servers, 2, "--work-delay-ms", "5")
        load = Load(instances)
        load.start()
        stack.callback(load.stop)
        load.wait_for_more(50, "at first")

        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
        stack.callback(subprocess.run, ["rabbitmqctl", "start_app"], check=True, capture_output=True)
        wait_until(lambda: all(rabbitmq_status(i).startswith("down") for i in instances), what="RabbitMQ to be down")
        load.wait_for_more(50, "while RabbitMQ is down")  # committed in PostgreSQL: they run later
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        wait_until(lambda: all(rabbitmq_status(i) == "connected" for i in instances), what="the instances to reconnect")
        load.wait_for_more(50, "after RabbitMQ came back")

        assert terminate_connections(url) >= 2 * len(instances), "each instance's store and readers"
        load.wait_for_more(50, "after the database connections were killed")
        load.stop()

        accepted = set(load.accepted)
        completed = lambda: {row["id"] for row in query(url, "SELECT id FROM tasks WHERE status = 'completed'")}  # noqa: E731
        wait_until(lambda: accepted <= completed(), timeout=90, what="every accepted task to complete")
        assert set(load.refused) <= {503}, load.refused
        stored = query(url, "SELECT id, status FROM tasks")
        assert accepted <= {row["id"] for row in stored} <= accepted | set(load.maybe), (
            "what was refused was not stored"
        )
        assert {row["status"] for row in stored} == {"completed"}


NGINX_CONF = """
daemon off;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream task_queue {{
{servers}
        keepalive 32;
        keepalive_timeout 20s;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 1m;
        location / {{
            proxy_pass http://task_queue;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error;
            proxy_read_timeout 15s;
        }}
    }}
}}
"""


def test_instances_behind_nginx_as_the_readme_shows_take_tasks_while_one_stops(tmp_path, servers):
    """The README's nginx configuration (Debian's nginx; CI installs it): submits through it keep
    getting 202 while one instance stops, since a stopped instance refuses connections and nginx
    passes the request to the next."""
    url, _ = servers
    with ExitStack() as stack:
        instances = start_instances(stack, tmp_path, servers, 2, "--work-delay-ms", "5")
        port = free_port()
        upstreams = "\n".join(
            f"        server {urlsplit(i.url).netloc} max_fails=1 fail_timeout=5s;" for i in instances
        )
        (tmp_path / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp_path, servers=upstreams, port=port))
        nginx = subprocess.Popen(
            ["nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        stack.callback(nginx.wait, 10)
        stack.callback(nginx.terminate)
        proxy = Service(str(tmp_path / "unused.db"), tmp_path / "proxy.log")  # a client of the proxy's address
        proxy.url = f"http://127.0.0.1:{port}"
        wait_until(lambda: proxy_answers(proxy), what="nginx to answer")

        before = [proxy.submit({"action": "uppercase", "data": {"text": str(n)}}) for n in range(40)]
        assert instances[1].stop() == 0  # a clean stop: its port refuses connections from now on
        after = [proxy.submit({"action": "uppercase", "data": {"text": str(n)}}) for n in range(40)]

        wait_until(lambda: statuses(url)["completed"] == 80, timeout=60, what="the 80 tasks to complete")
        assert {row["id"] for row in query(url, "SELECT id FROM tasks")} == set(before + after)
        assert proxy.request("GET", f"/tasks/{before[0]}")[1]["status"] == "completed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proxy_answers(proxy: Service) -> bool:
    try:
        return proxy.request("GET", "/health")[0] == 200
    except OSError:
        return False
