from __future__ import annotations

import threading
import time
from queue import SimpleQueue

import orjson
import pytest

from actors.actions import ActionRegistry, InvalidTaskData, default_action, registry
from actors.messages import Ack, Execute, Nack, QueuedTask, WorkerFailed
from actors.worker import WorkerActor
from tests.helpers import busy_for, receive, start_recorder


def run(action: str, data: dict, actions: ActionRegistry = registry) -> Ack | Nack:
    queue, inbox = start_recorder()
    worker = WorkerActor.start(actions)
    worker.tell(Execute(QueuedTask("t1", action, orjson.dumps(data).decode(), attempts=0), queue))
    reply = inbox.get(timeout=10)
    assert isinstance(reply, Ack | Nack)
    assert reply.task_id == "t1"
    assert worker.is_alive(), "a task's outcome never kills its worker"
    return reply


@pytest.mark.parametrize(
    ("action", "data", "output"),
    [
        ("uppercase", {"text": "hello"}, "HELLO"),
        ("sum", {"numbers": [1, 2, 3.5]}, 6.5),
        ("sum", {"numbers": []}, 0),
        ("send_email", {"to": "a@example.com"}, "processed"),
        # missing or null fields take the tutorial's defaults (`text or ""`, `numbers or {}`)
        ("uppercase", {}, ""),
        ("uppercase", {"text": None}, ""),
        ("sum", {}, 0),
        ("sum", {"numbers": None}, 0),
    ],
)
def test_the_tutorial_actions_ack_with_their_result(action, data, output):
    reply = run(action, data)

    assert isinstance(reply, Ack)
    assert orjson.loads(reply.result) == {"output": output}


@pytest.mark.parametrize(
    ("action", "data"),
    [
        ("uppercase", {"text": 5}),
        ("uppercase", {"text": ["a"]}),
        ("sum", {"numbers": "1,2"}),
        ("sum", {"numbers": [1, "2"]}),
        ("sum", {"numbers": [True]}),
    ],
)
def test_data_an_action_cannot_use_is_a_nack_without_retry(action, data):
    reply = run(action, data)

    assert isinstance(reply, Nack)
    assert not reply.retryable
    assert action in reply.error


def test_an_exception_in_an_action_is_a_retryable_nack_not_a_dead_worker():
    actions = ActionRegistry(default_action)

    @actions.action("explode")
    def explode(data):
        raise RuntimeError("boom")

    reply = run("explode", {}, actions)

    assert reply == Nack("t1", 1, "RuntimeError: boom", retryable=True)


def test_an_action_that_returns_no_object_fails_the_task():
    actions = ActionRegistry(default_action)

    @actions.action("answer")
    def answer(data):
        return 42

    reply = run("answer", {}, actions)

    assert isinstance(reply, Nack)
    assert not reply.retryable
    assert "not an object" in reply.error


def test_users_register_actions_with_a_decorator():
    actions = ActionRegistry(default_action)

    @actions.action("reverse")
    def reverse(data):
        if "text" not in data:
            raise InvalidTaskData("reverse needs data.text")
        return {"output": data["text"][::-1]}

    assert actions.names() == ["reverse"]
    assert orjson.loads(run("reverse", {"text": "abc"}, actions).result) == {"output": "cba"}


def test_a_worker_runs_the_tasks_it_is_sent_one_after_another():
    queue, inbox = start_recorder()
    worker = WorkerActor.start(registry)
    for n in range(3):
        worker.tell(Execute(QueuedTask(f"t{n}", "uppercase", f'{{"text": "x{n}"}}', 0), queue))

    replies = [receive(inbox, Ack) for _ in range(3)]

    assert [r.task_id for r in replies] == ["t0", "t1", "t2"]
    assert [orjson.loads(r.result)["output"] for r in replies] == ["X0", "X1", "X2"]


def test_a_task_past_its_timeout_is_a_retryable_nack_and_the_worker_goes_on():
    actions = ActionRegistry(default_action)
    calls: list[str] = []

    @actions.action("stuck", timeout_s=0.2)
    def stuck(data):
        calls.append("stuck")
        busy_for(30)
        calls.append("never")
        return {}

    queue, inbox = start_recorder()
    worker = WorkerActor.start(actions, supervisor=queue)
    started = time.monotonic()
    worker.tell(Execute(QueuedTask("t1", "stuck", "{}", 0), queue))
    worker.tell(Execute(QueuedTask("t2", "other", "{}", 0), queue))

    assert receive(inbox, Nack) == Nack("t1", 1, "timed out after 0.2 s", retryable=True)
    assert time.monotonic() - started < 5
    assert receive(inbox, Ack).task_id == "t2"
    assert worker.is_alive()
    assert calls == ["stuck"], "the stuck action was interrupted"


def test_the_simulated_work_of_a_task_is_cut_short_by_a_cancel():
    queue, inbox = start_recorder()
    interrupts: SimpleQueue[int] = SimpleQueue()
    worker = WorkerActor.start(registry, 30.0, supervisor=queue, interrupts=interrupts)  # 30 s of work_delay
    worker.tell(Execute(QueuedTask("t1", "uppercase", "{}", 0), queue, dispatch=7))

    interrupts.put(7)

    nack = receive(inbox, Nack)  # within receive's 10 s: the 30 s of work did not run out
    assert (nack.task_id, nack.retryable) == ("t1", False)
    assert nack.error in ("cancelled while it ran", "cancelled before it ran")
    assert worker.is_alive()


def test_setup_runs_once_in_each_worker_on_the_thread_that_runs_its_actions():
    actions = ActionRegistry(default_action)
    setups: list[int] = []

    @actions.setup
    def connect():
        setups.append(threading.get_ident())

    @actions.action("where")
    def where(data):
        return {"thread": threading.get_ident()}

    queue, inbox = start_recorder()
    worker = WorkerActor.start(actions, supervisor=queue)
    for n in range(2):
        worker.tell(Execute(QueuedTask(f"t{n}", "where", "{}", 0), queue))

    threads = {orjson.loads(receive(inbox, Ack).result)["thread"] for _ in range(2)}
    assert threads == set(setups)
    assert len(setups) == 1


def test_a_worker_whose_setup_fails_tells_its_supervisor_and_stops():
    actions = ActionRegistry(default_action)

    @actions.setup
    def broken():
        raise ConnectionError("no database")

    supervisor, inbox = start_recorder()
    worker = WorkerActor.start(actions, supervisor=supervisor)

    failed = receive(inbox, WorkerFailed)
    assert failed == WorkerFailed(worker, "ConnectionError: no database")
    assert worker.actor_stopped.wait(10)


def test_a_worker_that_raises_outside_an_action_tells_its_supervisor():
    supervisor, inbox = start_recorder()
    worker = WorkerActor.start(registry, supervisor=supervisor)

    worker.tell("not a message a worker knows")

    assert receive(inbox, WorkerFailed).worker == worker
    assert worker.actor_stopped.wait(10)


def test_a_worker_stuck_where_the_interrupt_cannot_reach_is_reported_and_runs_nothing_more():
    actions = ActionRegistry(default_action)
    release = threading.Event()

    @actions.action("blocked", timeout_s=0.1)
    def blocked(data):
        release.wait()  # blocked in C: the interrupt waits until it returns
        return {}

    supervisor, inbox = start_recorder()
    worker = WorkerActor.start(actions, supervisor=supervisor, grace_s=0.1)
    worker.tell(Execute(QueuedTask("t1", "blocked", "{}", 0), supervisor))
    worker.tell(Execute(QueuedTask("t2", "other", "{}", 0), supervisor))

    failed = receive(inbox, WorkerFailed)
    assert failed == WorkerFailed(worker, "stuck in task t1 after its interrupt")
    release.set()

    assert worker.actor_stopped.wait(10)
    assert inbox.empty(), "neither t1's late answer is sent (t1 is another worker's now) nor t2 run"
