"""Tasks whose outcomes a database may refuse, for the brokers under test to import."""

from __future__ import annotations

import time
from pathlib import Path

#: An exception type's name past FailedTask.exc_type's 255 characters.
LONG_NAME = "ErrorWhoseNameIsLong" * 16


def wait_until(moment: float) -> None:
    """Sleep until `moment` (time.time()): tasks that end together share a batch."""
    time.sleep(max(0.0, moment - time.time()))


def print_nul(moment: float = 0.0) -> str:
    wait_until(moment)
    print("a\0b")  # noqa: T201 - the test reads the captured stdout
    return "printed"


def raise_nul() -> None:
    raise ValueError("bad\0value")


def raise_long_name(moment: float = 0.0) -> None:
    wait_until(moment)
    error = type(LONG_NAME, (Exception,), {"__module__": __name__})
    raise error("a type name past its column")


def add_at(moment: float, a: int, b: int) -> int:
    wait_until(moment)
    return a + b


def say_at(moment: float, text: str) -> str:
    wait_until(moment)
    print(text)  # noqa: T201 - the test reads the captured stdout
    return text


def wait_for_file(path: str, seconds: float = 30.0) -> str:
    """Run until `path` exists (the test creates it), within `seconds`."""
    deadline = time.monotonic() + seconds
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return path
