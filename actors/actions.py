"""The actions a worker can run, kept in a registry that users extend with a decorator.

An action takes the task's ``data`` object and returns its ``result`` object::

    from actors.actions import registry, InvalidTaskData

    @registry.action("resize", timeout_s=10)
    def resize(data: dict) -> dict:
        if "width" not in data:
            raise InvalidTaskData("data.width is required")
        return {"output": ...}

Raising :class:`InvalidTaskData` fails the task at once (retrying cannot help); any other
exception is retried, and so is a task that runs past its timeout (``timeout_s``, or
``[workers] task_timeout_s`` of the configuration). A name that no action claims runs
:func:`default_action`. ``@registry.setup`` registers a function that each worker runs once
when it starts (to open a connection, say); if it raises, the worker is restarted.
Modules that register actions are imported at start-up when listed in
``[workers] imports`` of the configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import Any

__all__ = ["Action", "ActionRegistry", "InvalidTaskData", "registry"]

Action = Callable[[dict[str, Any]], dict[str, Any]]
Setup = Callable[[], None]


class InvalidTaskData(ValueError):
    """Raised by an action when the task's data cannot be used; the task fails without retry."""


class ActionRegistry:
    """Maps action names to functions; unknown names run the default action."""

    def __init__(self, default: Action) -> None:
        self._actions: dict[str, tuple[Action, float | None]] = {}
        self._default = default
        self._setups: list[Setup] = []

    def action(self, name: str, timeout_s: float | None = None) -> Callable[[Action], Action]:
        """Register the decorated function as the action called ``name``, with its own timeout."""

        def register(function: Action) -> Action:
            self._actions[name] = (function, timeout_s)
            return function

        return register

    def setup(self, function: Setup) -> Setup:
        """Register the decorated function to run once in each worker as it starts."""
        self._setups.append(function)
        return function

    def lookup(self, name: str) -> tuple[Action, float | None]:
        """The action called ``name`` and its own timeout (None: the configured default)."""
        return self._actions.get(name, (self._default, None))

    def run_setups(self) -> None:
        for setup in self._setups:
            setup()

    def names(self) -> list[str]:
        return sorted(self._actions)


def default_action(data: dict[str, Any]) -> dict[str, Any]:
    """Any action without a function of its own, as in the tutorial."""
    return {"output": "processed"}


registry = ActionRegistry(default_action)


@registry.action("uppercase")
def uppercase(data: dict[str, Any]) -> dict[str, Any]:
    text = data.get("text")
    if text is None:
        text = ""  # as in the tutorial: no text, empty output
    if not isinstance(text, str):
        raise InvalidTaskData("uppercase needs data.text, a string")
    return {"output": text.upper()}


@registry.action("sum")
def sum_numbers(data: dict[str, Any]) -> dict[str, Any]:
    numbers = data.get("numbers")
    if numbers is None:
        numbers = []  # as in the tutorial: no numbers, a sum of 0
    if not isinstance(numbers, list) or not all(isinstance(n, Real) and not isinstance(n, bool) for n in numbers):
        raise InvalidTaskData("sum needs data.numbers, a list of numbers")
    return {"output": sum(numbers)}
