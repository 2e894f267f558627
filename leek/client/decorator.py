"""The @task decorator: a function that knows how to push itself."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .. import ratelimit
from .api import TaskHandle, enqueue

P = ParamSpec("P")
R = TypeVar("R")

#: Every function decorated with @task, by dotted name (the admin offers them).
registry: dict[str, TaskFunction[Any, Any]] = {}


class TaskFunction(Generic[P, R]):
    """A function decorated with @task: call it to run it here, `.delay()` to push it."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        queue: str,
        priority: int,
        max_retries: int | None,
        timeout: float | None,
        rate_limit: str | None = None,
    ) -> None:
        self.fn = fn
        self.queue, self.priority = queue, priority
        self.max_retries, self.timeout = max_retries, timeout
        self.rate_limit = ratelimit.field(rate_limit)  # a bad limit fails at the decorator
        functools.update_wrapper(self, fn)
        self.__wrapped_task__ = fn
        registry[f"{fn.__module__}.{fn.__qualname__}"] = self

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Push the function with these arguments and the decorator's options."""
        return enqueue(
            self.fn,
            args,
            kwargs,
            queue=self.queue,
            priority=self.priority,
            max_retries=self.max_retries,
            timeout=self.timeout,
            rate_limit=self.rate_limit,
        )

    def enqueue(
        self,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        rate_limit: str | None = None,
    ) -> TaskHandle:
        """Push with options that override the decorator's."""
        return enqueue(
            self.fn,
            args,
            kwargs,
            queue=queue or self.queue,
            priority=self.priority if priority is None else priority,
            delay=delay,
            run_at=run_at,
            max_retries=self.max_retries if max_retries is None else max_retries,
            timeout=self.timeout if timeout is None else timeout,
            rate_limit=self.rate_limit if rate_limit is None else rate_limit,
        )


@overload
def task(fn: Callable[P, R], /) -> TaskFunction[P, R]: ...
@overload
def task(
    *,
    queue: str = ...,
    priority: int = ...,
    max_retries: int | None = ...,
    timeout: float | None = ...,
    rate_limit: str | None = ...,
) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...
def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    queue: str = "default",
    priority: int = 0,
    max_retries: int | None = None,
    timeout: float | None = None,
    rate_limit: str | None = None,
) -> Any:
    """Decorate a function so it gains `.delay(...)` and `.enqueue(...)`.

    `rate_limit` ("10/m") limits how often tasks of this name start, across
    every broker sharing the database (leek/ratelimit.py)."""

    def wrap(f: Callable[P, R]) -> TaskFunction[P, R]:
        return TaskFunction(
            f,
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            timeout=timeout,
            rate_limit=rate_limit,
        )

    return wrap(fn) if fn is not None else wrap
