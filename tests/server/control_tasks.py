"""Tasks for the tests of keys, expiry and pauses (imported by the brokers under test)."""

from __future__ import annotations

import time
from pathlib import Path


def gated(path: str, timeout: float = 30.0) -> str:
    """Wait until the file at `path` exists (at most `timeout` seconds), then
    return its name: a task that runs exactly as long as a test holds it."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not created within {timeout} s")
        time.sleep(0.01)
    return path


def mark(path: str, text: str) -> str:
    """Append `text` and a newline to `path`."""
    with open(path, "a") as handle:
        handle.write(text + "\n")
    return text


def fail_while_missing(path: str) -> str:
    """Fail until the file at `path` exists."""
    if not Path(path).exists():
        raise RuntimeError(f"{path} is missing")
    return path
