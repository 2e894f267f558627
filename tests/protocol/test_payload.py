"""Payloads and stored values: what protocol/payload.py pickles and signs, and loads back."""

from __future__ import annotations

import hashlib
import hmac
import operator
import os
import pickle
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from leek.exceptions import AuthenticationFailed, PayloadError
from leek.protocol.payload import (
    SIGNED_PREFIX,
    TASK_MAGIC,
    VALUE_MAGIC,
    _Unpicklable,
    dump_task,
    dump_value,
    is_signed,
    load_task,
    load_value,
    rest_key,
    signed,
    unsigned,
)


class Touch:
    """Unpickling this creates a file: proof that a blob reached pickle."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.path}",))


def flipped(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


def test_payloads_keep_lambdas_by_value() -> None:
    offset = 5
    fn, args, kwargs = load_task(dump_task(lambda x, y=0: x + y + offset, (1,), {"y": 2}))
    assert fn(*args, **kwargs) == 8


def test_a_payload_of_a_missing_module_names_it() -> None:
    body = pickle.dumps((len, (), {})).replace(b"builtins", b"nomodule")
    with pytest.raises(PayloadError, match="nomodule"):
        load_task(signed(TASK_MAGIC, body))


def test_an_unpicklable_argument_is_a_clear_error() -> None:
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
    assert pickle.dumps((operator.add, (1, 2), {}), protocol=5) == unsigned(
        dump_task(operator.add, (1, 2), {})
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
    assert load_value(signed(VALUE_MAGIC, old)) == "<a socket>"


# -- signatures ------------------------------------------------------------------


def test_payloads_and_values_are_signed_under_a_key_of_their_own(settings: Any) -> None:
    from leek import conf

    payload = dump_task(operator.add, (1, 2), {})
    value = dump_value(42)
    assert payload.startswith(TASK_MAGIC) and value.startswith(VALUE_MAGIC)
    assert is_signed(payload) and is_signed(value)
    secret = str(conf.get("SECRET"))
    body = payload[SIGNED_PREFIX:]
    key = hmac.new(secret.encode(), b"leek.rest", hashlib.sha256).digest()
    assert rest_key(secret) == key
    assert payload[4:SIGNED_PREFIX] == hmac.digest(key, TASK_MAGIC + body, "sha256")
    # not the key that signs frames
    assert payload[4:SIGNED_PREFIX] != hmac.digest(secret.encode(), TASK_MAGIC + body, "sha256")


def test_a_flipped_byte_anywhere_refuses_the_payload() -> None:
    payload = dump_task(operator.add, (1, 2), {})
    for at in (0, 3, 4, 20, SIGNED_PREFIX, len(payload) - 1):
        with pytest.raises(AuthenticationFailed, match="refused unread"):
            load_task(flipped(payload, at))


def test_a_pickle_behind_a_stolen_tag_is_never_unpickled(tmp_path: Path) -> None:
    task_id = uuid.uuid4()
    genuine = dump_task(operator.add, (1, 2), {})
    hostile = genuine[:SIGNED_PREFIX] + pickle.dumps(Touch(tmp_path / "ran"))
    with pytest.raises(AuthenticationFailed, match=f"task {task_id}'s payload.*LEEK_SECRET"):
        load_task(hostile, task_id)
    assert not (tmp_path / "ran").exists()


def test_an_unsigned_pickle_is_never_unpickled(tmp_path: Path) -> None:
    task_id = uuid.uuid4()
    with pytest.raises(AuthenticationFailed, match=f"task {task_id}'s payload.*no signature"):
        load_task(pickle.dumps(Touch(tmp_path / "ran")), task_id)
    with pytest.raises(AuthenticationFailed, match="a stored result.*no signature"):
        load_value(pickle.dumps(Touch(tmp_path / "ran")))
    assert not (tmp_path / "ran").exists()
    pickle.loads(pickle.dumps(Touch(tmp_path / "control")))  # noqa: S301 - the control
    assert (tmp_path / "control").exists()


def test_a_return_value_is_no_payload_and_a_payload_no_return_value() -> None:
    with pytest.raises(AuthenticationFailed, match="signed as a return value, not as a task"):
        load_task(dump_value((operator.add, (1, 2), {})))
    with pytest.raises(AuthenticationFailed, match="signed as a task payload, not as a return"):
        load_value(dump_task(operator.add, (1, 2), {}))


def test_a_blob_cut_short_is_refused() -> None:
    payload = dump_task(operator.add, (1, 2), {})
    for size in (0, 3, 4, SIGNED_PREFIX - 1):
        with pytest.raises(AuthenticationFailed):
            load_task(payload[:size])


def test_a_blob_signed_under_another_secret_is_refused(settings: Any) -> None:
    settings.LEEK = {"SECRET": "the-old-secret"}
    payload, value = dump_task(operator.add, (1, 2), {}), dump_value(7)
    assert load_task(payload)[1] == (1, 2) and load_value(value) == 7
    settings.LEEK = {"SECRET": "the-new-secret"}
    with pytest.raises(AuthenticationFailed, match="does not match LEEK_SECRET"):
        load_task(payload)
    with pytest.raises(AuthenticationFailed, match="does not match LEEK_SECRET"):
        load_value(value)


def test_accept_unsigned_rows_loads_unsigned_blobs_only(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    unsigned_payload = pickle.dumps((operator.add, (1, 2), {}))
    settings.LEEK = {"ACCEPT_UNSIGNED_ROWS": True}
    with caplog.at_level("WARNING", logger="leek.security"):
        fn, args, _ = load_task(unsigned_payload)
    assert fn(*args) == 3
    assert "ACCEPT_UNSIGNED_ROWS" in caplog.text
    assert load_value(pickle.dumps(5)) == 5
    with pytest.raises(AuthenticationFailed):  # a signature that fails still fails
        load_task(flipped(dump_task(operator.add, (1, 2), {}), 10))
    with pytest.raises(AuthenticationFailed):
        load_task(dump_value(3))
    settings.LEEK = {}
    with pytest.raises(AuthenticationFailed, match="no signature"):
        load_task(unsigned_payload)


def test_a_memoryview_loads_as_bytes_do() -> None:
    blob = dump_value({"pages": 12})
    assert load_value(memoryview(blob)) == {"pages": 12}
    assert load_task(memoryview(dump_task(operator.add, (1, 2), {})))[1] == (1, 2)


def test_unsigned_gives_back_the_bare_pickle() -> None:
    body = pickle.dumps(5)
    assert unsigned(signed(VALUE_MAGIC, body)) == body
    assert unsigned(body) == body
