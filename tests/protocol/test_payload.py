"""Payloads and stored values: what protocol/payload.py pickles, and what it loads back."""

from __future__ import annotations

import operator
import pickle
import threading

import pytest

from leek.exceptions import PayloadError
from leek.protocol.payload import _Unpicklable, dump_task, dump_value, load_task, load_value


def test_payloads_keep_lambdas_by_value() -> None:
    offset = 5
    fn, args, kwargs = load_task(dump_task(lambda x, y=0: x + y + offset, (1,), {"y": 2}))
    assert fn(*args, **kwargs) == 8


def test_a_payload_of_a_missing_module_names_it() -> None:
    body = pickle.dumps((len, (), {})).replace(b"builtins", b"nomodule")
    with pytest.raises(PayloadError, match="nomodule"):
        load_task(body)


def test_an_unpicklable_argument_is_a_clear_error() -> None:
    import threading

    with pytest.raises(PayloadError, match="cannot pickle task builtins.print"):
        dump_task(print, (threading.Lock(),), {})


def test_a_function_named_in_main_is_pickled_by_value() -> None:
    import __main__

    def triple(x: int) -> int:
        return 3 * x

    triple.__module__ = "__main__"
    triple.__qualname__ = "leek_test_triple"
    __main__.leek_test_triple = triple
    try:
        payload = dump_task(triple, (5,), {})  # the standard pickler could name it
    finally:
        del __main__.leek_test_triple
    fn, args, kwargs = load_task(payload)  # a broker has no such name in its __main__
    assert fn(*args, **kwargs) == 15


def test_importable_functions_and_closures_both_round_trip() -> None:
    base = 10
    for fn, expected in ((operator.add, 3), (lambda a, b: base + a + b, 13)):
        fn_, args, kwargs = load_task(dump_task(fn, (1, 2), {}))
        assert fn_(*args, **kwargs) == expected
    assert pickle.dumps((operator.add, (1, 2), {}), protocol=5) == dump_task(
        operator.add, (1, 2), {}
    )


def test_an_unpicklable_value_is_stored_as_its_repr() -> None:
    blob = dump_value(threading.Lock())
    assert b"leek.protocol.payload" in blob
    assert load_value(blob).startswith("<unlocked _thread.lock object")


def test_a_repr_stored_as_leek_protocol_unpicklable_loads_as_its_text() -> None:
    new = pickle.dumps(_Unpicklable("<a socket>"), protocol=0)
    old = new.replace(b"cleek.protocol.payload\n_Unpicklable\n", b"cleek.protocol\n_Unpicklable\n")
    assert b"leek.protocol.payload" not in old
    assert b"cleek.protocol\n_Unpicklable\n" in old
    assert load_value(old) == "<a socket>"
