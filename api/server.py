"""Serving the app with waitress: the listening socket, the server's settings, and a graceful stop.

The socket is bound before the database is touched (:func:`listen`), so a port that is taken
stops the start before anything else happens. The settings (:func:`waitress_options`) are
shared with the benchmark's ceiling app, so the two are measured alike.

A graceful stop (:class:`Server`) keeps waitress's loop running while the actors stop: the
listening socket closes first (new connections are refused, so a load balancer sends them
elsewhere), requests already received get their answers (with ``Connection: close`` once
the stop has begun), idle connections are closed, and only then does the loop end.

It reaches into waitress's loop (its connections, their requests, its trigger), which is
why ``setup.py`` keeps waitress to 3.0.x; the end-to-end stop tests guard it.
"""

from __future__ import annotations

import logging
import queue
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import falcon
import waitress
from waitress import wasyncore

from conf import Config

__all__ = ["Server", "listen", "raise_open_files_limit", "url_of", "waitress_options"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
QUIET_LOOKS = 10  # looks in a row, 5 ms apart, with no request in hand before idle connections are closed


def waitress_options(config: Config) -> dict[str, Any]:
    """waitress's settings but the address."""
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


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit.

    Every connection is a file descriptor, and the soft limit is often 1,024: a few idle
    connections too many would otherwise lock every client out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            logger.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, e)


def connection_limit(config: Config) -> int:
    """``server.connection_limit``, kept below the open files limit less what the rest of the process needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserve = 4 * config.server.threads + 64  # a read-only SQLite connection per thread (3 files each), and more
    if soft == resource.RLIM_INFINITY:
        return config.server.connection_limit
    return max(1, min(config.server.connection_limit, soft - reserve))


def listen(config: Config) -> socket.socket:
    """Bind and listen on ``server.host:port``; raises OSError if it cannot."""
    family, kind, proto, _, address = socket.getaddrinfo(
        config.server.host, config.server.port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE
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


class Server:
    """waitress serving ``app`` on ``sock``: :meth:`run` in the main thread; the graceful stop from another."""

    def __init__(self, app: falcon.App, sock: socket.socket, config: Config) -> None:
        self._waitress: Any = waitress.create_server(app, sockets=[sock], **waitress_options(config))
        self.connection_limit: int = self._waitress.adj.connection_limit

    def run(self) -> None:
        """Serve until :meth:`end_loop`, or until a signal handler raises :class:`SystemExit`."""
        self._waitress.run()

    def close(self) -> None:
        """After the loop: stop the request threads and close what is left."""
        self._waitress.task_dispatcher.shutdown(timeout=1)
        self._waitress.close()

    def close_listener(self) -> None:
        """Refuse new connections from now on; the loop goes on serving the open ones."""
        self._in_loop(self._close_listener)

    def close_connections_when_answered(self, timeout: float, meanwhile: threading.Thread) -> bool:
        """Close every connection without cutting off a request it has received; False if ``timeout`` came first.

        From now on each request in hand is answered with ``Connection: close``, so its client
        goes away (and finds the listener closed). Once ``meanwhile`` (the actors stopping,
        which the answers to submits wait for) has ended and no request or answer has been in
        hand for ``QUIET_LOOKS`` looks in a row, the idle connections left are closed.
        """
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < QUIET_LOOKS:
            busy = self._in_loop(self._close_after_answer)
            if busy is None:
                return True  # the loop has ended already (a second signal)
            quiet = 0 if busy or meanwhile.is_alive() else quiet + 1
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        self._in_loop(self._close_idle)
        return True

    def end_loop(self) -> None:
        """Close every connection and the loop's own pipe: with nothing left to watch, :meth:`run` returns."""
        self._in_loop(lambda: wasyncore.close_all(self._waitress._map))

    def _in_loop(self, thunk: Callable[[], T]) -> T | None:
        """Run ``thunk`` in the loop's own thread, which alone may change its connections; return its result,
        or None if the loop does not run it within a second (it has ended)."""
        results: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._waitress.trigger.pull_trigger(lambda: results.put(thunk()))
        try:
            return results.get(timeout=1)
        except queue.Empty:
            return None

    def _close_listener(self) -> None:
        server = self._waitress
        server.accepting = False
        server.del_channel()  # out of the loop's map first, so the loop never polls a closed socket
        server.socket.close()

    def _close_after_answer(self) -> int:
        """Have each request in hand answered with ``Connection: close``; return how many requests and
        answers still being written there are."""
        busy = 0
        for channel in list(self._waitress.active_channels.values()):
            for request in channel.requests:
                request.headers["CONNECTION"] = "close"  # waitress reads it as it writes the answer's headers
            busy += len(channel.requests) + bool(channel.total_outbufs_len)
        return busy

    def _close_idle(self) -> None:
        for channel in list(self._waitress.active_channels.values()):
            if not channel.requests and not channel.total_outbufs_len:
                channel.will_close = True  # closed on the loop's next turn
