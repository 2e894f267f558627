"""The checked fields of a task message.

The client checks them when it builds a push, so a mistake fails at the call;
the broker checks them again when a message arrives, since it trusts no client.
Each returns the value to store or raises ValueError naming the field. The
bounds are the columns' (32-bit integers), so no database refuses what passed.
"""

from __future__ import annotations

import math
from typing import Any

INT_MIN = -(2**31)
INT_MAX = 2**31 - 1


def priority(value: Any) -> int:
    return _integer("priority", value, INT_MIN)


def max_retries(value: Any) -> int | None:
    return None if value is None else _integer("max_retries", value, 0)


def timeout(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"timeout must be a finite number of seconds above zero, got {value}")
    return seconds


def run_after(value: Any) -> float | None:
    """A Unix time to run at, None for now; within the years a datetime holds."""
    if value is None:
        return None
    moment = float(value)
    if not 0 <= moment < 253_402_300_000:  # 9999-12-31
        raise ValueError(f"run_after must be a Unix time from 1970 to 9999, got {value}")
    return moment


#: A unique key's most characters (Task.key's column).
KEY_LENGTH = 255


def key(value: Any) -> str | None:
    """A task's unique key: None, or text of 1 to KEY_LENGTH characters that
    every database stores as it is (no NUL, valid Unicode)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"key must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= KEY_LENGTH:
        raise ValueError(f"key must be 1 to {KEY_LENGTH} characters, got {len(value)}")
    if "\x00" in value or not encodes(value):
        raise ValueError(f"key must be valid Unicode without NUL characters, got {value!r}")
    return value


def expires(value: Any) -> float | None:
    """A Unix time after which a task that has not started never runs; None for never."""
    if value is None:
        return None
    moment = float(value)
    if not 0 <= moment < 253_402_300_000:  # 9999-12-31
        raise ValueError(f"expires must be a Unix time from 1970 to 9999, got {value}")
    return moment


def encodes(value: str) -> bool:
    """Whether `value` encodes to UTF-8 (no lone surrogates), as every column takes text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _integer(name: str, value: Any, low: int) -> int:
    number = int(value)
    if not low <= number <= INT_MAX:
        raise ValueError(f"{name} must be between {low} and {INT_MAX}, got {number}")
    return number
