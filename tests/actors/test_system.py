"""The whole actor system, started as run.py starts it, under failing workers and stuck tasks."""

from __future__ import annotations

import logging

from actors import TaskSystem, start_system
from actors.actions import ActionRegistry, default_action
from actors.db import utc_now
from actors.messages import NewTask
from tests.helpers import busy_for, row, wait_until


def submit(system: TaskSystem, task_id: str, action: str) -> str:
    system.submit(NewTask(task_id, action, "{}", utc_now()))
    return task_id


def status(db_path: str, task_id: str) -> str:
    return row(db_path, task_id)["status"]


def test_a_worker_whose_setup_fails_is_replaced_and_the_pool_keeps_its_size(config, db_path):
    actions = ActionRegistry(default_action)
    setups = 0

    @actions.setup
    def flaky_setup():
        nonlocal setups
        setups += 1
        if setups == 1:
            raise ConnectionError("first connection refused")

    system = start_system(config, actions)
    try:
        ids = [submit(system, f"task-{n}", "anything") for n in range(10)]
        wait_until(lambda: all(status(db_path, i) == "completed" for i in ids), what="all tasks to complete")
        state = system.inspect()
        assert (state.workers, state.worker_restarts) == (2, 1)
        assert setups == 3
    finally:
        system.stop()


def test_a_stuck_task_times_out_is_retried_then_dead_lettered_and_does_not_stall_the_rest(config, db_path):
    actions = ActionRegistry(default_action)

    @actions.action("stuck", timeout_s=0.2)
    def stuck(data):
        busy_for(30)
        return {}

    system = start_system(config.replace(queue={"max_attempts": 2}), actions)
    try:
        stuck_id = submit(system, "stuck", "stuck")
        others = [submit(system, f"task-{n}", "anything") for n in range(20)]

        wait_until(lambda: all(status(db_path, i) == "completed" for i in others), what="the other tasks")
        failed = wait_until(lambda: (r := row(db_path, stuck_id))["status"] == "failed" and r, what="dead letter")
        assert (failed["attempts"], failed["error"]) == (2, "timed out after 0.2 s")
        assert system.inspect().workers == 2
    finally:
        system.stop()


def test_logs_show_the_error_but_not_the_task_data(config, db_path, caplog):
    actions = ActionRegistry(default_action)

    @actions.action("leaky")
    def leaky(data):
        raise PermissionError("wrong password")

    system = start_system(config.replace(queue={"max_attempts": 2}), actions)
    try:
        caplog.set_level(logging.INFO)
        system.submit(NewTask("leaky", "leaky", '{"password": "hunter2"}', utc_now()))
        failed = wait_until(lambda: (r := row(db_path, "leaky"))["status"] == "failed" and r, what="the failure")
    finally:
        system.stop()

    assert failed["error"] == "PermissionError: wrong password"
    assert "task leaky leaky attempt 2 failed in " in caplog.text
    assert "PermissionError: wrong password" in caplog.text
    assert "hunter2" not in caplog.text
