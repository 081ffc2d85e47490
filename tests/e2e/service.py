"""Runs ``python run.py`` as a real process on a free port, and talks to it over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"ready on (http://[\d.]+:\d+)")


class Service:
    """One run of the service; ``start`` waits for its ready line, ``stop`` sends SIGTERM."""

    def __init__(self, db_path: str, log_path: Path, *flags: str) -> None:
        self.db_path = db_path
        self.log_path = log_path
        self.flags = flags
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Service:
        self.log_path.write_text("")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "run.py", "--port", "0", "--db", self.db_path, *self.flags],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        match = wait_until(self._ready_line, what="the service's ready line")
        self.url = match.group(1)
        return self

    def _ready_line(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the service exited with {self.process.returncode}:\n{self.log()}")
        return READY.search(self.log())

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, answer, _ = self.call(method, path, body)
        return status, answer

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any, dict[str, str]]:
        """Status, decoded JSON body and headers (names in lower case) of one request."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read()), {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read()), {k.lower(): v for k, v in e.headers.items()}

    def submit(self, body: dict[str, Any]) -> str:
        status, answer = self.request("POST", "/tasks", body)
        assert status == 202, answer
        return answer["id"]

    def wait_finished(self, task_id: str) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            status, task = self.request("GET", f"/tasks/{task_id}")
            assert status == 200, task
            return task if task["status"] in ("completed", "failed") else None

        return wait_until(finished, what=f"task {task_id} to finish")
