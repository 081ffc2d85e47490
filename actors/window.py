"""ReadyWindow: the ready tasks the QueueActor holds in memory, in the order they run.

Higher priority first; within one priority, the order they became ready in (the store's
order: due time, then the order they were stored in). The window holds at most
``capacity`` tasks; the rest wait in the store, which is the source of truth, so a task
the window lets go of is not lost: it is fetched again later.
"""

from __future__ import annotations

import bisect
from collections import deque

from actors.messages import QueuedTask

__all__ = ["ReadyWindow"]


class ReadyWindow:
    """Ready tasks by priority; each priority a FIFO queue."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_priority: dict[int, deque[QueuedTask]] = {}
        self._priorities: list[int] = []  # the keys of _by_priority, ascending
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, task: QueuedTask) -> QueuedTask | None:
        """Add ``task`` after the others of its priority; if that makes one too many, let go of the
        last task of the lowest priority and return it."""
        tasks = self._by_priority.get(task.priority)
        if tasks is None:
            tasks = self._by_priority[task.priority] = deque()
            bisect.insort(self._priorities, task.priority)
        tasks.append(task)
        self._size += 1
        if self._size <= self.capacity:
            return None
        lowest = self._priorities[0]
        let_go = self._by_priority[lowest].pop()
        self._forget_if_empty(lowest)
        self._size -= 1
        return let_go

    def outranks_lowest(self, priority: int) -> bool:
        """Whether a task of ``priority`` that is due now would run before the last task in the window."""
        return bool(self._priorities) and priority > self._priorities[0]

    def pop(self) -> QueuedTask:
        """The next task to run."""
        highest = self._priorities[-1]
        task = self._by_priority[highest].popleft()
        self._forget_if_empty(highest)
        self._size -= 1
        return task

    def remove(self, task_id: str) -> QueuedTask | None:
        """Let go of the task ``task_id``, if the window holds it; the task, or None."""
        for priority in list(self._priorities):
            tasks = self._by_priority[priority]
            kept = deque(task for task in tasks if task.id != task_id)
            if len(kept) != len(tasks):
                removed = next(task for task in tasks if task.id == task_id)
                self._by_priority[priority] = kept
                self._size -= 1
                self._forget_if_empty(priority)
                return removed
        return None

    def clear(self) -> None:
        self._by_priority.clear()
        self._priorities.clear()
        self._size = 0

    def _forget_if_empty(self, priority: int) -> None:
        if not self._by_priority[priority]:
            del self._by_priority[priority]
            self._priorities.remove(priority)
