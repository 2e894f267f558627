"""Task payloads and stored return values: the signed pickles inside frames and rows.

A task's payload (its callable, args and kwargs) is pickled and signed once, by
whoever makes the task (a client, the spool, a periodic schedule), and
unpickled only on a worker, by :func:`load_task`. A task's return value is
pickled and signed by the worker that ran it and unpickled by whoever reads its
result, by :func:`load_value`; one that cannot be pickled is stored as its repr.

Both are stored in the database, where whoever can write a row could otherwise
have a broker or a web process unpickle anything. So each blob is signed::

    +--------+--------------------+---------------------------+
    | magic  | tag                | pickle                    |
    | 4 B    | 32 B HMAC-SHA256   | the rest of the blob      |
    +--------+--------------------+---------------------------+

The magic is ``LKT1`` for a task's payload and ``LKV1`` for a return value, so
neither passes for the other. The tag is HMAC-SHA256 over the magic and the
pickle under the rest key, HMAC-SHA256(SECRET, b"leek.rest"): derived from the
shared secret that signs frames, under a label of its own. The tag is compared
in constant time before the pickle is read; a blob that fails raises
AuthenticationFailed and is never unpickled. A blob is signed as a whole, so a
requeue that leaves the row's payload alone keeps its signature.

Rows written before leek signed them carry no magic: migration
``0008_signed_payloads`` signs them, and ``ACCEPT_UNSIGNED_ROWS`` lets such
blobs load (logged) while older clients still write them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
import uuid
from collections.abc import Callable
from typing import Any

import cloudpickle

from .. import conf
from ..exceptions import AuthenticationFailed, PayloadError
from .frame import PICKLE_PROTOCOL
from .mac import Mac

security = logging.getLogger("leek.security")

#: The magic of a signed task payload, and of a signed return value.
TASK_MAGIC = b"LKT1"
VALUE_MAGIC = b"LKV1"
MAGICS = (TASK_MAGIC, VALUE_MAGIC)
_KINDS = {TASK_MAGIC: "a task payload", VALUE_MAGIC: "a return value"}
#: Bytes before the pickle of a signed blob: the magic and the tag.
SIGNED_PREFIX = 4 + 32
#: The label of the rest key: HMAC-SHA256(SECRET, REST_LABEL).
REST_LABEL = b"leek.rest"

#: Per secret, the Mac of its rest key.
_MACS: dict[str, Mac] = {}


def rest_key(secret: str) -> bytes:
    """The key that signs stored blobs, derived from the shared `secret`."""
    return hmac.new(secret.encode(), REST_LABEL, hashlib.sha256).digest()


def _mac() -> Mac:
    """The Mac of the rest key of the current SECRET."""
    secret = str(conf.get("SECRET"))
    found = _MACS.get(secret)
    if found is None:
        found = _MACS[secret] = Mac(rest_key(secret))
    return found


def _tag(magic: bytes, body: bytes | memoryview) -> bytes:
    """HMAC-SHA256 of `magic` and `body` under the rest key of the current SECRET."""
    return _mac().tag(magic, body)


def signed(magic: bytes, body: bytes) -> bytes:
    """`body`, a pickle, signed as a stored blob of kind `magic` (TASK_MAGIC or
    VALUE_MAGIC) under the current SECRET."""
    return magic + _tag(magic, body) + body


def is_signed(blob: bytes | memoryview) -> bool:
    """Whether `blob` has the form of a signed blob (its tag is not checked)."""
    return bytes(blob[:4]) in MAGICS and len(blob) >= SIGNED_PREFIX


def unsigned(blob: bytes) -> bytes:
    """The pickle inside a signed blob, unchecked; an unsigned blob as it is."""
    return blob[SIGNED_PREFIX:] if is_signed(blob) else blob


def _opened(
    magic: bytes, blob: bytes | memoryview, kind: str, task_id: uuid.UUID | str | None
) -> bytes | memoryview:
    """The pickle inside `blob` once its tag matches; AuthenticationFailed
    otherwise, saying which blob ("task <id>'s payload": `kind` of `task_id`,
    written only then)."""
    view = memoryview(blob)
    found = bytes(view[:4])
    if found != magic or len(view) < SIGNED_PREFIX:
        if found not in MAGICS and conf.get("ACCEPT_UNSIGNED_ROWS"):
            security.warning(
                "unsigned blob loaded blob=%s (ACCEPT_UNSIGNED_ROWS is on)",
                _which(kind, task_id),
                extra={"action": "unsigned_row_accepted"},
            )
            return view
        raise AuthenticationFailed(
            f"{_which(kind, task_id)} was refused unread: {_unfit(found, magic)}"
        )
    body = view[SIGNED_PREFIX:]
    if not hmac.compare_digest(bytes(view[4:SIGNED_PREFIX]), _tag(magic, body)):
        raise AuthenticationFailed(
            f"{_which(kind, task_id)} was refused unread: its signature does not match LEEK_SECRET "
            "(changed in the database, or signed under another secret)"
        )
    return body


def _unfit(found: bytes, magic: bytes) -> str:
    """Why a blob whose magic is `found` is not a signed blob of kind `magic`."""
    if found not in MAGICS:
        return (
            "it carries no signature (written into the database by hand, or "
            "before leek signed rows: run `manage.py migrate`)"
        )
    if found != magic:
        return f"it is signed as {_KINDS[found]}, not as {_KINDS[magic]}"
    return "it is cut short before the end of its signature"


def _which(kind: str, task_id: uuid.UUID | str | None) -> str:
    return f"task {task_id}'s {kind}" if task_id is not None else f"a stored {kind}"


def dump_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The signed payload of a task: importable callables by reference, others by value.

    The standard pickler goes first, as it is several times faster: it names
    importable functions and classes just as cloudpickle does. What it cannot
    pickle (lambdas, closures, local classes), what it would name in
    ``__main__`` (which a broker cannot import), and everything while a module
    is registered with ``cloudpickle.register_pickle_by_value``, goes through
    cloudpickle, which pickles it by value."""
    return task_dumper()(fn, args, kwargs)


def task_dumper() -> Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], bytes]:
    """`dump_task` for the tasks of one batch: the SECRET and cloudpickle's
    registry are read once, when it is made, not for each task."""
    by_value = bool(cloudpickle.list_registry_pickle_by_value())
    tag = _mac().after(TASK_MAGIC)
    dumps = pickle.dumps

    def dump(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        task = (fn, args, kwargs)
        body = None
        if not by_value:
            try:
                body = dumps(task, protocol=PICKLE_PROTOCOL)
            except Exception:  # noqa: S110 - cloudpickle below tries, and reports
                pass
            else:
                if b"__main__" in body:
                    body = None
        if body is None:
            try:
                body = cloudpickle.dumps(task, protocol=PICKLE_PROTOCOL)
            except Exception as exc:
                raise PayloadError(f"cannot pickle task {task_name(fn)}: {exc}") from exc
        return TASK_MAGIC + tag(body) + body

    return dump


def load_task(
    payload: bytes | memoryview, task_id: uuid.UUID | str | None = None
) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """The callable and arguments of a signed payload (of task `task_id`, named
    in errors). AuthenticationFailed for a payload whose signature is missing
    or does not match (it is never unpickled); PayloadError names what is missing."""
    body = _opened(TASK_MAGIC, payload, "payload", task_id)
    try:
        fn, args, kwargs = pickle.loads(body)  # noqa: S301 - its signature was checked above
    except Exception as exc:
        raise PayloadError(f"cannot unpickle task: {type(exc).__name__}: {exc}") from exc
    return fn, args, kwargs


def dump_value(value: Any) -> bytes:
    """A task's return value as stored, signed; an unpicklable one is kept as its repr."""
    try:
        body = pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception:
        body = pickle.dumps(_Unpicklable(repr(value)), protocol=PICKLE_PROTOCOL)
    return signed(VALUE_MAGIC, body)


def load_value(blob: bytes | memoryview | None, task_id: uuid.UUID | str | None = None) -> Any:
    """A stored return value (None for no blob). AuthenticationFailed for a blob
    whose signature is missing or does not match: it is never unpickled."""
    if blob is None:
        return None
    body = _opened(VALUE_MAGIC, blob, "result", task_id)
    value = pickle.loads(body)  # noqa: S301 - its signature was checked above
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
