"""Metrics: the service's Prometheus metrics, kept with ``prometheus-client``.

Counters and histograms are updated where things happen (the edge counts submits, the queue
what workers finish, the store its commits); gauges of the queue's depth are read when
Prometheus scrapes, from the ``task_counts`` table and the queue's ``Inspect``, so a scrape
never counts the tasks table. Names follow Dramatiq's style: ``*_total`` counters with an
``action`` label.

The ``action`` label names each registered action and the first ``MAX_OTHER_ACTIONS`` other
names seen; any further name is counted as ``other``, so clients cannot grow the number of
series without bound by making up action names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Gauge", "Metrics"]

PREFIX = "task_queue"
MAX_OTHER_ACTIONS = 100
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SUBMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
Gauge = tuple[str, str, float, dict[str, str]]  # (name without the prefix, help, value, labels)


class Metrics:
    """One registry per running system, so several systems in one process (tests) keep apart."""

    def __init__(self, registered_actions: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._labelled = set(registered_actions)
        self._others = 0
        self._of_action: dict[str, ActionMetrics] = {}
        self._lock = threading.Lock()

        def counter(name: str, documentation: str, labels: tuple[str, ...] = ("action",)) -> Counter:
            return Counter(f"{PREFIX}_{name}", documentation, labels, registry=self.registry)

        self.submitted = counter("tasks_submitted", "Tasks committed by POST /tasks (an idempotent replay is not)")
        self.completed = counter("tasks_completed", "Tasks that ran and completed")
        self.failed = counter("tasks_failed", "Tasks failed for good: out of attempts, or not to be retried")
        self.retried = counter("tasks_retried", "Failed attempts that will be retried")
        self.cancelled = counter("tasks_cancelled", "Running tasks interrupted by a cancel")
        self.worker_restarts = counter("worker_restarts", "Workers that died or got stuck and were replaced", ())
        self.duration = Histogram(
            f"{PREFIX}_task_duration_seconds",
            "How long an attempt ran on its worker",
            ["action"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.submit_latency = Histogram(
            f"{PREFIX}_submit_seconds",
            "From a submit reaching the service to its commit (the 202)",
            buckets=SUBMIT_BUCKETS,
            registry=self.registry,
        )
        self.commit_batch = Histogram(
            f"{PREFIX}_store_commit_writes",
            "Writes (new tasks, status updates, control requests) per store commit",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def of_action(self, name: str) -> ActionMetrics:
        """The metrics labelled with the action called ``name`` (kept, so a task does not look them up)."""
        label = self.action(name)
        found = self._of_action.get(label)
        if found is None:
            found = self._of_action[label] = ActionMetrics(
                submitted=self.submitted.labels(label),
                duration=self.duration.labels(label),
                outcomes={
                    "completed": self.completed.labels(label),
                    "retried": self.retried.labels(label),
                    "failed": self.failed.labels(label),
                    "cancelled": self.cancelled.labels(label),
                },
            )
        return found

    def action(self, name: str) -> str:
        """The ``action`` label for the action called ``name``."""
        if name in self._labelled:
            return name
        with self._lock:
            if self._others >= MAX_OTHER_ACTIONS:
                return "other"
            self._labelled.add(name)
            self._others += 1
        return name

    def add_gauges(self, read: Callable[[], Iterable[Gauge]]) -> None:
        """Add gauges read at each scrape: ``read`` gives (name, help, value, labels) for each."""
        self.registry.register(_GaugesAtScrape(read))


@dataclass(frozen=True, slots=True)
class ActionMetrics:
    """One action's labelled counters and histogram."""

    submitted: Counter
    duration: Histogram
    outcomes: dict[str, Counter]  #: by outcome: completed, retried, failed, cancelled


class _GaugesAtScrape(Collector):
    def __init__(self, read: Callable[[], Iterable[Gauge]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for name, documentation, value, labels in self._read():
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=list(labels))
            family.add_metric(list(labels.values()), value)
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read at scrape time only: registering must not read
