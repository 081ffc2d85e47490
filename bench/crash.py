"""Crash harness: kill the service at random moments under load, and prove no accepted task is lost.

    python -m bench.crash [--trials 20] [--signal KILL|TERM] [--clients 4] [--seed N] [--distributed]

Each trial starts ``python run.py`` on the same SQLite file, submits a steady stream of tasks
over HTTP from ``--clients`` connections while recording every id answered 202, and sends
the signal once a random number of tasks has been accepted. After the last trial the
service runs once more until every task is finished. Then every accepted id must be
``completed`` and be listed exactly once by ``GET /tasks``, and ``PRAGMA integrity_check``
must say ``ok``. With ``--signal TERM`` every stop must also exit 0 within 10 s.

``--distributed`` does the same with the service on this machine's PostgreSQL and RabbitMQ
(a schema and a queue of its own, removed afterwards; see tests/servers.py): the restart
finds the killed run's unacked tasks delivered again by RabbitMQ instead of re-queued by
recovery, and there is no SQLite file to check.

Requests cut off by the kill get no answer: the task may or may not have been committed,
and the client cannot know. They are counted as "unanswered", not as accepted. A connection
refused (the service has closed its listening socket, or is not up) sends nothing, so it is
counted apart. After SIGTERM the service answers every request it has received before it
closes a connection; what is left is the race of any keep-alive connection: a request sent
just as the server closes the idle connection is never read (so never committed).
"""

from __future__ import annotations

import argparse
import http.client
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from actors.store import LOST_CLAIM
from tests.e2e.service import Service
from tests.helpers import query, wait_until
from tests.servers import AMQP_URL, postgres_schema, rabbitmq_queue

BODIES = [
    orjson.dumps({"action": "uppercase", "data": {"text": "crash test"}}),
    orjson.dumps({"action": "sum", "data": {"numbers": [1, 2, 3]}}),
    orjson.dumps({"action": "other", "data": {}}),
]
STOP_DEADLINE_S = 10.0
POSTGRES_INTEGRITY = "n/a (PostgreSQL: no file to check)"


@dataclass
class Report:
    trials: int = 0
    accepted: set[str] = field(default_factory=set)
    unanswered: int = 0  # requests cut off by a stop: committed or not, the client cannot know
    connections_refused: int = 0  # nothing sent: the listening socket was closed
    refused: int = 0  # 503s (for instance while stopping)
    exit_codes: Counter[int] = field(default_factory=Counter)
    slowest_stop_s: float = 0.0
    completed: int = 0
    lost: list[str] = field(default_factory=list)
    listed_twice: int = 0
    ran_again: int = 0  # accepted tasks that ran more than once (at-least-once delivery)
    claimed_again: int = 0  # (distributed) claimed ahead by a killed instance: an attempt counted, maybe not run
    integrity: str = ""

    def ok(self, sig: signal.Signals) -> bool:
        clean_stops = sig is signal.SIGKILL or set(self.exit_codes) == {0}
        sound = self.integrity in ("ok", POSTGRES_INTEGRITY)
        return not self.lost and not self.listed_twice and sound and clean_stops

    def rows(self, sig: signal.Signals) -> list[tuple[str, str]]:
        return [
            ("signal", sig.name),
            ("kill/restart trials", str(self.trials)),
            ("tasks accepted (202)", str(len(self.accepted))),
            ("completed", str(self.completed)),
            ("lost", str(len(self.lost))),
            ("listed more than once", str(self.listed_twice)),
            ("ran more than once (at-least-once)", str(self.ran_again)),
            ("claimed ahead again (attempt counted)", str(self.claimed_again)),
            ("requests cut off unanswered", str(self.unanswered)),
            ("connections refused (nothing sent)", str(self.connections_refused)),
            ("refused with 503", str(self.refused)),
            ("exit codes", ", ".join(f"{code}: {n}" for code, n in sorted(self.exit_codes.items()))),
            ("slowest stop", f"{self.slowest_stop_s:.2f} s"),
            ("integrity", self.integrity),
        ]


class Submitter(threading.Thread):
    """Submits tasks over one keep-alive connection until told to stop or the server goes away."""

    def __init__(self, url: str, report: Report, lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self._address = urlsplit(url)
        self._report = report
        self._lock = lock
        self.stopping = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(self._address.hostname or "127.0.0.1", self._address.port, timeout=30)
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                conn.request("POST", "/tasks", BODIES[n % 3], {"Content-Type": "application/json"})
                response = conn.getresponse()
                answer = orjson.loads(response.read())
            except ConnectionRefusedError:
                with self._lock:
                    self._report.connections_refused += 1
                break  # the server is gone, or going
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self._report.unanswered += 1
                break  # the server is gone
            with self._lock:
                if response.status == 202:
                    self._report.accepted.add(answer["id"])
                else:
                    self._report.refused += 1
        conn.close()


def run_trial(service: Service, report: Report, clients: int, stop_after: int, sig: signal.Signals) -> None:
    lock = threading.Lock()
    already = len(report.accepted)
    submitters = [Submitter(service.url, report, lock) for _ in range(clients)]
    for submitter in submitters:
        submitter.start()
    wait_until(lambda: len(report.accepted) >= already + stop_after, timeout=60, what="tasks to be accepted")
    started = time.monotonic()
    code = service.stop(sig, timeout=STOP_DEADLINE_S)
    report.slowest_stop_s = max(report.slowest_stop_s, time.monotonic() - started)
    report.exit_codes[code] += 1
    for submitter in submitters:
        submitter.stopping.set()
    for submitter in submitters:
        submitter.join(30)
    report.trials += 1


def listed_ids(service: Service) -> Counter[str]:
    """Every id GET /tasks shows, paging with the cursor."""
    seen: Counter[str] = Counter()
    cursor = ""
    while True:
        status, page = service.request("GET", f"/tasks?limit=1000{cursor}")
        assert status == 200, page
        seen.update(task["id"] for task in page["tasks"])
        if page["next_cursor"] is None:
            return seen
        cursor = f"&cursor={page['next_cursor']}"


def check(service: Service, database: str, report: Report) -> None:
    """Let the last run finish every task, then look for lost, doubled or corrupt data."""

    def finished() -> bool:
        status, health = service.request("GET", "/health")
        return status == 200 and health["backlog"] == 0

    wait_until(finished, timeout=120, what="every task to finish")
    listed = listed_ids(service)
    if database.startswith("postgresql://"):
        report.integrity = POSTGRES_INTEGRITY
    else:
        report.integrity = query(database, "PRAGMA integrity_check")[0][0]
    status_of = {row["id"]: row["status"] for row in query(database, "SELECT id, status FROM tasks")}
    ran_again = "SELECT COUNT(*) AS n FROM tasks WHERE attempts > 1 AND id NOT IN (SELECT task_id FROM task_errors"
    report.ran_again = query(database, ran_again + " WHERE error = ?)", (LOST_CLAIM,))[0]["n"]
    claimed = "SELECT COUNT(DISTINCT task_id) AS n FROM task_errors WHERE error = ?"
    report.claimed_again = query(database, claimed, (LOST_CLAIM,))[0]["n"]
    report.completed = sum(status_of.get(task_id) == "completed" for task_id in report.accepted)
    report.lost = [t for t in report.accepted if status_of.get(t) != "completed" or listed[t] != 1]
    report.listed_twice = sum(n > 1 for n in listed.values())


def crash_test(
    workdir: Path, trials: int, sig: signal.Signals, clients: int = 4, seed: int = 0, *, distributed: bool = False
) -> Report:
    """Run the trials on a database in ``workdir`` (or PostgreSQL and RabbitMQ) and check the outcome."""
    rng = random.Random(seed)
    db_path = str(workdir / "tasks.db")
    report = Report()
    with ExitStack() as servers:
        env: dict[str, str] = {}
        database = db_path
        if distributed:
            database = servers.enter_context(postgres_schema())
            queue = servers.enter_context(rabbitmq_queue())
            env = {"TASK_QUEUE_STORE_URL": database, "TASK_QUEUE_QUEUE_URL": AMQP_URL, "TASK_QUEUE_QUEUE_NAME": queue}
        for trial in range(trials):
            service = Service(db_path, workdir / f"trial-{trial}.log", "--work-delay-ms", "5", env=env).start()
            try:
                run_trial(service, report, clients, stop_after=rng.randint(20, 300), sig=sig)
            finally:
                service.kill()
        service = Service(db_path, workdir / "final.log", "--work-delay-ms", "0", env=env).start()
        try:
            check(service, database, report)
            assert service.stop() == 0
        finally:
            service.kill()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--signal", choices=["KILL", "TERM"], default="KILL")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--distributed", action="store_true", help="on this machine's PostgreSQL and RabbitMQ")
    args = parser.parse_args()
    sig = signal.Signals[f"SIG{args.signal}"]

    with tempfile.TemporaryDirectory() as tmp:
        report = crash_test(Path(tmp), args.trials, sig, args.clients, args.seed, distributed=args.distributed)
    rows = [("seed", str(args.seed)), *report.rows(sig)]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    verdict = report.ok(sig)
    print("PASS" if verdict else f"FAIL: lost {report.lost[:10]}")
    return 0 if verdict else 1


if __name__ == "__main__":
    raise SystemExit(main())
