from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conf import ConfigError, load_config, unknown_environment_variables
from tests.e2e.service import ROOT, Service


def test_the_defaults_come_from_conf_default_toml():
    config = load_config(env={})

    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.store.path == "data/tasks.db"
    assert (config.workers.count, config.workers.work_delay_ms) == (2, 100)
    assert (config.queue.prefetch, config.queue.max_attempts) == (5, 3)


def test_a_file_then_the_environment_then_overrides_win(tmp_path):
    file = tmp_path / "my.toml"
    file.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[workers]\ncount = 4\n')
    env = {"TASK_QUEUE_SERVER_PORT": "9100", "TASK_QUEUE_WORKERS_IMPORTS": "my.tasks, other.tasks"}

    config = load_config(file, env=env, overrides={"workers": {"count": 8}})

    assert (config.server.host, config.server.port) == ("0.0.0.0", 9100)
    assert config.workers.count == 8
    assert config.workers.imports == ("my.tasks", "other.tasks")


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"TASK_QUEUE_SERVER_PORT": "eighty"}, {}, "server.port must be a whole number"),
        ({}, {"server": {"port": 70000}}, "invalid value for server.port"),
        ({}, {"workers": {"count": 0}}, "invalid value for workers.count"),
        ({}, {"workers": {"count": "2"}}, "workers.count has the wrong type"),
        ({}, {"server": {"colour": "red"}}, "unknown configuration key server.colour"),
        ({}, {"cache": {"size": 1}}, "unknown configuration section 'cache'"),
        ({}, {"store": {"synchronous": "SOMETIMES"}}, "invalid value for store.synchronous"),
        ({"TASK_QUEUE_STORE_CHECK_ON_START": "maybe"}, {}, "store.check_on_start must be true or false"),
        ({}, {"store": {"check_on_start": 1}}, "store.check_on_start has the wrong type"),
        ({"TASK_QUEUE_SERVER_AUTH_TOKEN": "   "}, {}, "server.auth_token must be printable ASCII without spaces"),
        ({"TASK_QUEUE_SERVER_AUTH_TOKEN": " secret"}, {}, "server.auth_token must be printable ASCII"),
        ({"TASK_QUEUE_SERVER_AUTH_TOKEN": "s\u00e9cret"}, {}, "server.auth_token must be printable ASCII"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(env, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env, overrides=overrides)


def test_a_missing_or_broken_file_is_a_config_error(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")

    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(broken, env={})


def test_environment_variables_that_name_no_setting_are_reported_with_a_suggestion():
    env = {"TASK_QUEUE_SERVER_PROT": "9000", "TASK_QUEUE_SERVER_PORT": "9001", "OTHER": "x", "TASK_QUEUE_X": "1"}

    assert unknown_environment_variables(env) == [
        "environment variable TASK_QUEUE_SERVER_PROT names no setting and is ignored;"
        " did you mean TASK_QUEUE_SERVER_PORT?",
        "environment variable TASK_QUEUE_X names no setting and is ignored",
    ]


def test_a_blank_auth_token_stops_run_py_with_exit_code_2(tmp_path):
    process = subprocess.run(
        [sys.executable, "run.py", "--port", "0", "--db", str(tmp_path / "tasks.db")],
        cwd=ROOT,
        env={**os.environ, "TASK_QUEUE_SERVER_AUTH_TOKEN": " "},
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
    )

    assert process.returncode == 2
    assert "server.auth_token must be printable ASCII without spaces" in process.stderr


def test_run_py_warns_of_a_mistyped_environment_variable(tmp_path):
    service = Service(str(tmp_path / "tasks.db"), tmp_path / "run.log", env={"TASK_QUEUE_SERVER_PROT": "9000"})
    try:
        service.start()
    finally:
        service.kill()

    assert "WARNING task_queue: environment variable TASK_QUEUE_SERVER_PROT names no setting" in service.log()


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("0", False), ("TRUE", True), ("1", True)])
def test_a_switch_is_read_from_the_environment(raw, value):
    assert load_config(env={"TASK_QUEUE_STORE_CHECK_ON_START": raw}).store.check_on_start is value
