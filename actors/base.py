"""The actor type every actor here derives from: a pykka ThreadingActor with a faster inbox."""

from __future__ import annotations

import queue

import pykka
from pykka._actor import ActorInbox  # the protocol pykka's inbox hook returns

__all__ = ["Actor"]


class Actor(pykka.ThreadingActor):
    """A pykka ThreadingActor whose inbox is a ``queue.SimpleQueue``.

    pykka's own inbox is a ``queue.Queue``, built on a Condition in Python; SimpleQueue is
    written in C. Measured here, a tell and its receipt cost 1.6 µs of CPU instead of 14 µs,
    and a task passes through about eight messages. ``_create_actor_inbox`` is the hook pykka
    keeps for new actor types; pykka needs only ``put``, ``get`` and ``empty`` of it.
    """

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return queue.SimpleQueue()
