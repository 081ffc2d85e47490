"""The JSON that task-queue stores: values that come back exactly as they were sent.

A task's ``data`` and an action's ``result`` are stored as JSON text and shown again as
JSON. Three kinds of value would not survive that round trip unchanged, so they are
refused, with the reason, instead of being quietly altered:

- integers outside the signed 64-bit range (orjson would read them as floats, and most
  languages and databases cannot hold them); send such numbers as strings;
- floats that are not finite (NaN and the infinities have no JSON form; orjson would write
  ``null``);
- objects and arrays nested more than :data:`MAX_DEPTH` levels deep.

Numbers with a fraction or an exponent are IEEE 754 doubles, as in JavaScript: ``1E2``
comes back as ``100.0``, and digits beyond a double's precision are not kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from typing import Any

import orjson

__all__ = ["MAX_DEPTH", "NotStorable", "check_storable", "loads_exact"]

MAX_DEPTH = 32  #: objects and arrays inside one another, the outermost counting as 1
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
INT_RANGE = f"the signed 64-bit range ({INT_MIN} to {INT_MAX})"
_LONG_DIGITS = re.compile(rb"\d{19}")  # any integer orjson might not keep has at least 19 digits


class NotStorable(ValueError):
    """Raised when a JSON value would not come back exactly as it was given."""


def loads_exact(body: bytes) -> Any:
    """Parse JSON as orjson does, refusing integers that orjson would turn into floats.

    Raises ``orjson.JSONDecodeError`` for text that is not JSON and :class:`NotStorable`
    for an integer outside the signed 64-bit range. Only a body with a run of 19 digits
    (rare) is parsed a second time, by the standard library, to look at its integers.
    """
    long_digits = _LONG_DIGITS.search(body) is not None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        if long_digits:  # orjson refuses integers too large for a double: say so plainly
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                json.loads(body, parse_int=_checked_int)
        raise
    if long_digits:
        try:
            json.loads(body, parse_int=_checked_int)
        except RecursionError:  # deeper than the standard library goes, and far beyond MAX_DEPTH
            raise NotStorable(f"the body is nested more than {MAX_DEPTH} levels deep") from None
    return document


def _checked_int(text: str) -> int:
    if len(text) > 20 or not INT_MIN <= int(text) <= INT_MAX:
        raise NotStorable(f"an integer is outside {INT_RANGE}; send it as a string")
    return 0  # the value itself is not needed: orjson's parse is the one kept


def check_storable(value: Any, what: str) -> None:
    """Raise :class:`NotStorable` (naming ``what``) if ``value`` would not come back as it is."""
    _check(value, what, 1)


def _check(value: Any, what: str, depth: int) -> None:
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list | tuple):
        children = value
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise NotStorable(f"{what} has an integer outside {INT_RANGE}")
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise NotStorable(f"{what} has a number that is not finite ({value}), which JSON cannot hold")
        return
    else:
        return  # anything else is orjson's to write or refuse
    if depth > MAX_DEPTH:
        raise NotStorable(f"{what} is nested more than {MAX_DEPTH} levels deep")
    for child in children:
        _check(child, what, depth + 1)
