"""Tasks the chain tests push as signatures (the brokers import them from here)."""

from __future__ import annotations

from typing import Any

from leek.client import task
from tests.tasks import append_line


@task(max_retries=0)
def add(a: int, b: int) -> int:
    return a + b


@task(max_retries=0)
def mul(a: int, b: int) -> int:
    return a * b


@task(max_retries=0)
def broken(value: Any) -> None:
    raise ValueError(f"broken on {value!r}")


@task(max_retries=0)
def mark(value: Any, path: str, text: str) -> Any:
    """Append `text` to `path` (one line per run), then pass `value` on."""
    append_line(path, text)
    return value


@task(max_retries=0)
def total(values: list[int], path: str) -> int:
    """The sum of a chord's results; each run appends a line to `path`."""
    append_line(path, "total")
    return sum(values)


def square(x: int) -> int:
    return x * x
