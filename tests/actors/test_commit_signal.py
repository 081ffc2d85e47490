from __future__ import annotations

import queue
import threading

import pykka
import pytest

from actors.commit_signal import CommitSignal
from actors.store import StoreError


def test_get_waits_for_set_from_another_thread() -> None:
    signal = CommitSignal()
    setter = threading.Timer(0.01, signal.set)
    setter.start()
    assert signal.get(timeout=10) is None
    assert signal.get(timeout=0) is None  # answered once, answered for good
    setter.join()


def test_get_times_out_when_nothing_is_set() -> None:
    with pytest.raises(pykka.Timeout):
        CommitSignal().get(timeout=0.01)


def test_set_exception_is_raised_by_every_get() -> None:
    signal = CommitSignal()
    signal.set_exception((StoreError, StoreError("cannot write"), None))
    for _ in range(2):
        with pytest.raises(StoreError, match="cannot write"):
            signal.get(timeout=0)


def test_a_second_answer_is_refused_as_by_pykka_futures() -> None:
    signal = CommitSignal()
    signal.set()
    with pytest.raises(queue.Full):
        signal.set_exception((StoreError, StoreError("late"), None))
    assert signal.get(timeout=0) is None
