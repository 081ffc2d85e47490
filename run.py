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
import signal
import sys
import textwrap
import threading
import time
from typing import Any

from actors import DatabaseInUse, TaskSystem, start_system
from actors.actions import registry
from api import create_app
from api.logs import configure_logging
from api.openapi import package_version
from api.server import Server, listen, raise_open_files_limit, url_of
from conf import Config, ConfigError, describe_settings, load_config, unknown_environment_variables

logger = logging.getLogger("task_queue")

WATCHDOG_INTERVAL_S = 0.5
STOP_DEADLINE_S = 9.0  # exit within this long of SIGTERM (process managers wait 10 s by default)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="task-queue",
        description=textwrap.fill(
            "Run the task-queue service: a REST API (POST /tasks, GET /tasks, GET /stats, GET /metrics) and a"
            " dashboard (GET /) in front of actors that run tasks and keep them in SQLite (or, with store.url and"
            " queue.url, in PostgreSQL with RabbitMQ, for many instances).",
            100,
        ),
        epilog=textwrap.fill(
            "Settings, lowest precedence first: conf/default.toml, the file given with --config (same layout),"
            " environment variables, then the flags above. Every setting, its variable and its default:",
            100,
        )
        + "\n\n"
        + describe_settings()
        + "\n\nExit codes: 0 stopped by SIGTERM or SIGINT; 1 start-up failed or an actor died; 2 bad settings.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--config", help="TOML file overriding conf/default.toml")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free one (default 8080)")
    parser.add_argument("--db", help="SQLite file (default data/tasks.db; unused with store.url)")
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


def tune_interpreter(config: Config) -> None:
    """Interpreter settings for serving, shared with the benchmark's ceiling app."""
    sys.setswitchinterval(config.server.switch_interval_us / 1_000_000)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is N" under load


class Watchdog(threading.Thread):
    """Stops the process (exit code 1) when an actor has died: it never limps on silently."""

    def __init__(self, system: TaskSystem) -> None:
        super().__init__(name="watchdog", daemon=True)
        self._system = system
        self._done = threading.Event()
        self.failure: str | None = None

    def run(self) -> None:
        while not self._done.wait(WATCHDOG_INTERVAL_S):
            if not self._system.accepting:
                return  # stopping: the actors stop on purpose now
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
    """Handles SIGINT and SIGTERM, and stops the service gracefully on a thread of its own.

    The first signal refuses new submits at once and starts the stop: close the listening
    socket; stop the work (the workers finish what they hold) while requests already received
    are answered; close each connection once it has no request in hand; end waitress's loop.
    Then :meth:`finish`, on the main thread, closes the store. A second signal ends the loop
    at once.
    """

    def __init__(self, system: TaskSystem, server: Server) -> None:
        self._system = system
        self._server = server
        self._stopper: threading.Thread | None = None
        self.received_at: float | None = None
        self.loop_ended = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def __call__(self, signum: int, frame: Any) -> None:
        # Python may run a second signal's handler inside the first one (between two bytecodes), so the
        # first marks the stop as begun before anything else, and a second one during it does nothing.
        if self.received_at is not None:
            if self._stopper is not None and not self.loop_ended.is_set():
                raise SystemExit(0)  # ends waitress's loop at once
            return
        self.received_at = time.monotonic()
        logger.info("received %s, stopping", signal.Signals(signum).name)
        self._system.accepting = False  # submits from now on get 503 at once
        self._stopper = threading.Thread(target=self._stop, name="stopper", daemon=True)
        self._stopper.start()

    def _stop(self) -> None:
        try:
            self._server.close_listener()
            work = threading.Thread(target=self._system.stop_work, args=(self.time_left() - 1,), name="stop-work")
            work.start()
            if not self._server.close_connections_when_answered(max(0.1, self.time_left() - 1), meanwhile=work):
                if work.is_alive():
                    logger.warning("tasks still running at the stop's deadline stay running and run after a restart")
                else:
                    logger.warning("connections still busy at the stop's deadline are cut off")
            work.join()
        finally:
            self._server.end_loop()

    def finish(self) -> None:
        """After the loop: let the stop under way end, then close the store (or stop everything, if none was)."""
        self.loop_ended.set()
        if self._stopper is None:
            self._system.stop(self.time_left())
        else:
            self._stopper.join()
            self._system.close(self.time_left())

    def time_left(self) -> float:
        """Of the STOP_DEADLINE_S the process has to exit in once signalled."""
        spent = 0.0 if self.received_at is None else time.monotonic() - self.received_at
        return max(1.0, STOP_DEADLINE_S - spent)


def main(argv: list[str] | None = None) -> int:
    if "" not in sys.path and os.getcwd() not in sys.path:  # the console script: modules of workers.imports
        sys.path.insert(0, os.getcwd())  # are found in the working folder, as with python run.py
    try:
        config = build_config(parse_args(argv))
    except ConfigError as e:
        print(f"task-queue: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log)
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
    try:
        server = Server(create_app(system), sock, config)
        stop_signal = StopSignal(system, server)
        stop_signal.install()
        watchdog.start()
        logger.info(
            "actions: %s; any other name runs the default action", ", ".join(registry.names()) or "none registered"
        )
        logger.info(
            "task-queue ready on %s (%s, %d workers, schema v%d, up to %d connections)",
            url_of(sock),
            system.where,
            config.workers.count,
            system.schema_version,
            server.connection_limit,
        )
        server.run()
    finally:
        if watchdog.is_alive():
            watchdog.stop()
        if server is None:
            system.stop()
        else:
            stop_signal.finish()
            server.close()
        sock.close()
    logger.info("stopped")
    return 1 if watchdog.failure else 0


if __name__ == "__main__":
    sys.exit(main())
