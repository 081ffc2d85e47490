"""Start task-queue: ``python run.py [--host H] [--port P] [--db FILE] [--workers N] ...``.

Migrates the database, starts the actors and serves the API with waitress until SIGINT or
SIGTERM, then stops in order and exits 0. Exits 1 if start-up fails or an actor dies (let
it crash: a process manager restarts it, and recovery re-queues the unfinished tasks);
exits 2 on a bad configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import waitress

from actors import DatabaseInUse, TaskSystem, start_system
from api import create_app
from conf import Config, ConfigError, load_config, unknown_environment_variables

logger = logging.getLogger("task_queue")

WATCHDOG_INTERVAL_S = 0.5
STOP_DEADLINE_S = 9.0  # exit within this long of SIGTERM (process managers wait 10 s by default)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the task-queue service.")
    parser.add_argument("--config", help="TOML file overriding conf/default.toml")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free one (default 8080)")
    parser.add_argument("--db", help="SQLite file (default data/tasks.db)")
    parser.add_argument("--workers", type=int, help="number of worker actors (default 2)")
    parser.add_argument("--work-delay-ms", type=int, help="simulated work per task (default 100)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    flags = {
        "server": {"host": args.host, "port": args.port},
        "store": {"path": args.db},
        "workers": {"count": args.workers, "work_delay_ms": args.work_delay_ms},
    }
    overrides = {section: {k: v for k, v in keys.items() if v is not None} for section, keys in flags.items()}
    return load_config(args.config, overrides=overrides)


def waitress_options(config: Config) -> dict[str, Any]:
    """The server settings but the address, shared with the benchmark's ceiling app (bench/ceiling.py)."""
    channel_timeout_s = config.server.channel_timeout_s
    return {
        "threads": config.server.threads,
        "connection_limit": connection_limit(config),
        "backlog": config.server.listen_backlog,
        "channel_timeout": channel_timeout_s,
        "cleanup_interval": max(1, min(30, channel_timeout_s // 3)),
        "max_request_body_size": 4 * config.server.max_body_bytes,
        "asyncore_use_poll": True,
        "ident": "task-queue",
    }


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the limit now in force.

    Every connection is a file descriptor, and the soft limit is often 1,024: a few idle
    connections too many would otherwise lock every client out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            logger.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, e)
    return soft


def connection_limit(config: Config) -> int:
    """``server.connection_limit``, kept below the open files limit less what the rest of the process needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserve = 4 * config.server.threads + 64  # a read-only SQLite connection per thread (3 files each), and more
    if soft == resource.RLIM_INFINITY:
        return config.server.connection_limit
    return max(1, min(config.server.connection_limit, soft - reserve))


def listen(config: Config) -> socket.socket:
    """Bind and listen on ``server.host:port`` (raises OSError if it cannot), before the database is touched."""
    host = config.server.host
    family, kind, proto, _, address = socket.getaddrinfo(
        host, config.server.port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(config.server.listen_backlog)  # clients that come during start-up wait in the backlog
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def tune_interpreter(config: Config) -> None:
    """Interpreter settings for serving, shared with the benchmark's ceiling app."""
    sys.setswitchinterval(config.server.switch_interval_us / 1_000_000)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is N" under load


def create_server(config: Config, system: TaskSystem, sock: socket.socket) -> Any:
    return waitress.create_server(create_app(system), sockets=[sock], **waitress_options(config))


class Watchdog(threading.Thread):
    """Stops the process (exit code 1) when an actor has died: it never limps on silently."""

    def __init__(self, system: TaskSystem) -> None:
        super().__init__(name="watchdog", daemon=True)
        self._system = system
        self._done = threading.Event()
        self.failure: str | None = None

    def run(self) -> None:
        while not self._done.wait(WATCHDOG_INTERVAL_S):
            problem = self._system.problem()
            if problem is not None:
                self.failure = problem
                logger.critical("%s; stopping", problem)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


class StopSignal:
    """Handles SIGINT and SIGTERM: stop accepting tasks, end waitress's loop, remember when."""

    def __init__(self, system: TaskSystem) -> None:
        self._system = system
        self.received_at: float | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def __call__(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logger.info("received %s, stopping", signal.Signals(signum).name)
        self.received_at = time.monotonic()
        self._system.accepting = False  # submits from now on get 503 at once
        raise SystemExit(0)  # ends waitress's loop; it lets running requests finish

    def time_left(self) -> float:
        """Of the STOP_DEADLINE_S the process has to exit in once signalled."""
        spent = 0.0 if self.received_at is None else time.monotonic() - self.received_at
        return max(1.0, STOP_DEADLINE_S - spent)


def main(argv: list[str] | None = None) -> int:
    try:
        config = build_config(parse_args(argv))
    except ConfigError as e:
        print(f"task-queue: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in unknown_environment_variables(os.environ):
        logger.warning("%s", warning)
    tune_interpreter(config)
    raise_open_files_limit()
    try:
        sock = listen(config)
    except OSError as e:
        logger.critical("cannot listen on %s:%d: %s", config.server.host, config.server.port, e)
        return 1
    try:
        system = start_system(config)
    except DatabaseInUse as e:
        logger.critical("%s", e)
        sock.close()
        return 1
    except Exception as e:  # noqa: BLE001 -- any failure to start is reported in one line, exit 1
        logger.critical("start-up failed: %s: %s", type(e).__name__, e)
        sock.close()
        return 1

    server = None
    watchdog = Watchdog(system)
    stop_signal = StopSignal(system)
    try:
        server = create_server(config, system, sock)
        stop_signal.install()
        watchdog.start()
        logger.info(
            "task-queue ready on %s (database %s, %d workers, schema v%d, up to %d connections)",
            url_of(sock),
            Path(config.store.path).resolve(),
            config.workers.count,
            system.schema_version,
            server.adj.connection_limit,
        )
        server.run()
    finally:
        if server is not None:
            server.close()
        sock.close()
        if watchdog.is_alive():
            watchdog.stop()
        system.stop(stop_signal.time_left())
    logger.info("stopped")
    return 1 if watchdog.failure else 0


if __name__ == "__main__":
    sys.exit(main())
