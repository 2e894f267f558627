"""Task payloads and stored return values: the pickles inside frames and rows.

A task's payload (its callable, args and kwargs) is pickled by the client and
unpickled only on a worker, by :func:`load_task`. A task's return value is
pickled by the worker that ran it and unpickled by whoever reads its result,
by :func:`load_value`; one that cannot be pickled is stored as its repr.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle

from ..exceptions import PayloadError
from .frame import PICKLE_PROTOCOL


def dump_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a task: importable callables by reference, others by value.

    The standard pickler goes first, as it is several times faster: it names
    importable functions and classes just as cloudpickle does. What it cannot
    pickle (lambdas, closures, local classes), what it would name in
    ``__main__`` (which a broker cannot import), and everything while a module
    is registered with ``cloudpickle.register_pickle_by_value``, goes through
    cloudpickle, which pickles it by value."""
    task = (fn, args, kwargs)
    if not cloudpickle.list_registry_pickle_by_value():
        try:
            payload = pickle.dumps(task, protocol=PICKLE_PROTOCOL)
        except Exception:  # noqa: S110 - cloudpickle below tries, and reports
            pass
        else:
            if b"__main__" not in payload:
                return payload
    try:
        by_value: bytes = cloudpickle.dumps(task, protocol=PICKLE_PROTOCOL)
        return by_value
    except Exception as exc:
        raise PayloadError(f"cannot pickle task {task_name(fn)}: {exc}") from exc


def load_task(payload: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The callable and arguments of a payload; PayloadError names what is missing."""
    try:
        fn, args, kwargs = pickle.loads(payload)  # noqa: S301 - committed from a signed frame
    except Exception as exc:
        raise PayloadError(f"cannot unpickle task: {type(exc).__name__}: {exc}") from exc
    return fn, args, kwargs


def dump_value(value: Any) -> bytes:
    """A task's return value as stored; an unpicklable one is kept as its repr."""
    try:
        return pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception:
        return pickle.dumps(_Unpicklable(repr(value)), protocol=PICKLE_PROTOCOL)


def load_value(blob: bytes | memoryview | None) -> Any:
    """A stored return value (None for no blob)."""
    if blob is None:
        return None
    value = pickle.loads(bytes(blob))  # noqa: S301 - written by the broker
    return value.text if isinstance(value, _Unpicklable) else value


class _Unpicklable:
    """Stands for a return value that could not be pickled; stored result blobs
    name this class by reference."""

    def __init__(self, text: str) -> None:
        self.text = text


def task_name(fn: Callable[..., Any]) -> str:
    """The dotted name of a callable, as shown in the admin."""
    fn = getattr(fn, "__wrapped_task__", fn)
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"
