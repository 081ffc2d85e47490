"""DatabaseLock: one process per SQLite database.

Two processes serving one database would each recover the other's running tasks and run
them twice. So before the service migrates or recovers anything it takes an exclusive
``flock`` on a lock file beside the database (``tasks.db.lock`` for ``tasks.db``) and
writes its PID there. The kernel releases the lock when the process dies, however it
dies (SIGKILL included), so a stale lock never blocks a restart. The lock file itself is
never deleted: deleting it would let a second process lock a new file while the first
still holds the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["DatabaseInUse", "DatabaseLock"]


class DatabaseInUse(Exception):
    """Raised when another process (or another system in this one) serves the database."""


class DatabaseLock:
    """An exclusive lock on ``<database>.lock``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, db_path: str) -> None:
        self.database = Path(db_path).resolve()
        self.path = self.database.with_name(self.database.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once, or raise :class:`DatabaseInUse` saying who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            by = f" by PID {holder}" if holder else ""
            raise DatabaseInUse(
                f"the database {self.database} is in use{by}: one task-queue process per"
                f" database file (the lock is {self.path})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
