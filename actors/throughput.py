"""Throughput: how many tasks finished, second by second, over the last hour.

Owned by the QueueActor, which counts each task a worker finishes (completed or failed);
``/stats`` and the dashboard's sparkline read it through the queue's ``Inspect``. It is kept
in memory, so a restart starts it again from zero.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["Throughput"]

HOUR_S = 3600
MINUTE_S = 60


class Throughput:
    """Counts per second for the last hour (at most 3,600 numbers)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seconds: deque[list[int]] = deque()  # [epoch second, tasks finished in it], oldest first

    def record(self) -> None:
        second = int(self._clock())
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
            return
        self._seconds.append([second, 1])
        while self._seconds[0][0] <= second - HOUR_S:
            self._seconds.popleft()

    def per_minute(self) -> tuple[int, ...]:
        """Tasks finished in each of the last 60 minutes, oldest first; the last one ends now."""
        now = int(self._clock())
        minutes = [0] * (HOUR_S // MINUTE_S)
        for second, count in self._seconds:
            minutes_ago = (now - second) // MINUTE_S
            if 0 <= minutes_ago < len(minutes):
                minutes[-1 - minutes_ago] += count
        return tuple(minutes)
