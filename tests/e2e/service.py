"""Runs the service (or another server of ours) as a real process, and talks to it over real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"ready on (http://(?:[\d.]+|\[[0-9a-f:]+\]):\d+)")


class Server:
    """A Python process that logs ``ready on http://host:port``; ``start`` waits for that line."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.started_in_s = 0.0
        self._launched_at = 0.0

    def start(self, timeout: float = 60) -> Server:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process, without waiting for it to be ready (see :meth:`wait_ready`)."""
        self._launched_at = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )

    def wait_ready(self, timeout: float = 60) -> Server:
        try:
            self.url = wait_until(self._ready_line, timeout=timeout, what=f"the ready line of {self.args}").group(1)
        except BaseException:
            self.kill()  # a server that never got ready must not outlive the test
            raise
        self.started_in_s = time.monotonic() - self._launched_at
        return self

    def _ready_line(self) -> re.Match[str] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.args} exited with {self.process.returncode}:\n{self.log()}")
        return READY.search(self.log())

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` and return the exit code; raises TimeoutExpired if it takes over ``timeout``."""
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Make sure the process is gone (for clean-up; it may have stopped already)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def shut(self) -> None:
        """Stop with SIGTERM, killing it if it takes too long: clean-up after a benchmark."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.stop(timeout=15)
        self.kill()

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far, user and system."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def context_switches(self) -> int:
        """Context switches of the process's live threads so far: each one a thread put to sleep or woken."""
        assert self.process is not None
        total = 0
        for thread in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                for line in (thread / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:  # voluntary and nonvoluntary
                        total += int(line.split()[1])
        return total

    def rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


class Service(Server):
    """``python run.py`` on a free port and the given database."""

    def __init__(self, db_path: str, log_path: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        super().__init__(["run.py", "--port", "0", "--db", db_path, *flags], log_path, env)
        self.db_path = db_path

    def start(self, timeout: float = 60) -> Service:
        super().start(timeout)
        return self

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, answer, _ = self.call(method, path, body)
        return status, answer

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 30, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """Status, decoded JSON body and headers (names in lower case) of one request."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
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
