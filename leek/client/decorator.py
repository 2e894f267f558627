"""The @task decorator: a function that knows how to push itself."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .. import ratelimit
from .api import enqueue
from .handle import TaskHandle

if TYPE_CHECKING:
    from .canvas import Signature

P = ParamSpec("P")
R = TypeVar("R")

#: A task's unique key: a string, or a callable given the task's arguments.
Key = str | Callable[..., str]
#: A task's expiry: a timedelta from its push, or an aware datetime.
Expires = timedelta | datetime

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
        key: Key | None = None,
        key_running: bool = False,
        expires: Expires | None = None,
        rate_limit: str | None = None,
    ) -> None:
        self.fn = fn
        self.queue, self.priority = queue, priority
        self.max_retries, self.timeout = max_retries, timeout
        self.key, self.key_running, self.expires = key, key_running, expires
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
            key=self.key_of(args, kwargs),
            key_running=self.key_running,
            expires=self.expires,
            rate_limit=self.rate_limit,
        )

    def key_of(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], key: Key | None = None
    ) -> str | None:
        """The unique key of a call: `key` or the decorator's, a callable one
        called with the call's arguments."""
        chosen = self.key if key is None else key
        if chosen is None or isinstance(chosen, str):
            return chosen
        value = chosen(*args, **kwargs)
        if not isinstance(value, str):
            raise TypeError(
                f"the key callable of task {self.__name__} must return a string, "
                f"got {type(value).__name__}"
            )
        return value

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """The signature of this call, with the decorator's options, for a
        chain, group or chord (leek.chain, leek.group)."""
        from .canvas import signature

        return signature(self, *args, **kwargs)

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
        key: Key | None = None,
        key_running: bool | None = None,
        expires: Expires | None = None,
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
            key=self.key_of(args, kwargs or {}, key),
            key_running=self.key_running if key_running is None else key_running,
            expires=self.expires if expires is None else expires,
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
    key: Key | None = ...,
    key_running: bool = ...,
    expires: Expires | None = ...,
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
    key: Key | None = None,
    key_running: bool = False,
    expires: Expires | None = None,
    rate_limit: str | None = None,
) -> Any:
    """Decorate a function so it gains `.delay(...)` and `.enqueue(...)`.

    `key` (a string, or a callable given the task's arguments that returns
    one), `key_running` and `expires` are enqueue's. `rate_limit` ("10/m")
    limits how often tasks of this name start, across every broker sharing
    the database (leek/ratelimit.py)."""

    def wrap(f: Callable[P, R]) -> TaskFunction[P, R]:
        return TaskFunction(
            f,
            queue=queue,
            priority=priority,
            max_retries=max_retries,
            timeout=timeout,
            key=key,
            key_running=key_running,
            expires=expires,
            rate_limit=rate_limit,
        )

    return wrap(fn) if fn is not None else wrap
