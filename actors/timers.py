"""Delayed messages: an actor that wants to hear from itself later arms a timer."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pykka

__all__ = ["tell_later"]


def tell_later(ref: pykka.ActorRef[Any], message: Any, delay_s: float) -> threading.Timer:
    """Tell ``ref`` ``message`` after ``delay_s`` seconds; cancel the returned timer to call it off."""
    timer = threading.Timer(max(0.0, delay_s), _tell_if_alive, (ref, message))
    timer.daemon = True
    timer.start()
    return timer


def _tell_if_alive(ref: pykka.ActorRef[Any], message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):  # the actor stopped before its timer fired
        ref.tell(message)
