"""The hot path's statements of scalar values on PostgreSQL, sent through libpq directly.

A push of one task is one INSERT, a round of a few pushes one INSERT of a few
rows, and a running mark one UPDATE: statements of scalar values whose only
result is the count of rows they wrote, or the ids they inserted. psycopg's
cursor spends some 20 µs of Python on each (turning the query, choosing a
dumper for each value, its generators of waits, its result objects), and
more for a round's arrays, in the broker's event loop where every
microsecond comes before the clients' replies. `Direct` sends such a
statement through psycopg's libpq wrapper (``psycopg.pq``, the layer its
cursors are built on) with the values encoded here, waits for the socket
itself, and raises the error class psycopg would.

The values a row holds are few: None, bool, int, float, str, bytes, UUID and
aware datetimes. Each goes as text, but bytes go as binary, and the
server infers each parameter's type from its column. A value of another type
raises TypeError, never goes as something else; a text holding NUL raises
psycopg's DataError, as psycopg does (libpq would cut it short there).

The statement is prepared on the connection the first time it runs (under a
name of leek's, beside psycopg's own), unless the connection prepares nothing
(``prepare_threshold`` None, behind a pooler in transaction mode): then it is
sent whole each time.

With a spin (the SPIN setting), the wait for the server's answer polls the
connection before it sleeps on it, while the recent answers came within the
spin and no task of the broker runs, nor started or ended lately, one thread
of the process at a time (protocol/spin.py). A thread asleep is woken by the
answer some 50 µs after it came: polling made one client's pushes to
PostgreSQL 28% faster on the 2-core host of docs/benchmarks.md.
"""

from __future__ import annotations

import math
import re
import select
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import errors, pq

from ...protocol.spin import RUNS, WAIT_WEIGHT, AnswerSpins, alone

#: A placeholder of the store's statements (`%s`), and any other use of `%`.
_PLACEHOLDER = re.compile(r"%s")
_PERCENT = re.compile(r"%(?!s)")
#: libpq's formats of a parameter.
TEXT, BINARY = 0, 1
#: The statuses of a statement that ran: with no rows back, and with rows.
DONE = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)


class Direct:
    """Statements of scalar values on one psycopg connection, each sent
    through libpq: `run` returns the count of rows one wrote, `returning`
    the first column of the rows it returned."""

    def __init__(self, connection: Any, spin: float = 0.0) -> None:
        self._pgconn = connection.pgconn
        self.spin = spin  # seconds the wait for an answer may poll first
        self._wait = 0.0  # seconds the answers took, a moving average
        self._encoding = connection.info.encoding
        self._prepares = connection.prepare_threshold is not None
        self._names: dict[str, bytes] = {}  # statement: its prepared name
        self._texts: dict[str, bytes] = {}  # statement: its text with $1, $2, ...
        self._readable = select.poll()
        self._readable.register(self._pgconn.socket, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self._pgconn.socket, select.POLLOUT)

    def run(self, statement: str, params: Sequence[Any]) -> int:
        """Run `statement` (the store's, with %s placeholders) with `params`;
        the count of rows it inserted or updated."""
        return int(self._run(statement, params).command_tuples or 0)

    def returning(self, statement: str, params: Sequence[Any]) -> list[bytes]:
        """Run `statement` with `params`; the first column of each row it
        returned, as text."""
        result = self._run(statement, params)
        return [result.get_value(row, 0) for row in range(result.ntuples)]

    def _run(self, statement: str, params: Sequence[Any]) -> Any:
        pgconn = self._pgconn
        values = [self._encode(value) for value in params]
        formats = [BINARY if type(value) is bytes else TEXT for value in params]
        if not self._prepares:
            pgconn.send_query_params(self._text(statement), values, param_formats=formats)
        else:
            name = self._names.get(statement)
            if name is None:
                name = self._prepare(statement)
            pgconn.send_query_prepared(name, values, param_formats=formats)
        return self._result()

    def _prepare(self, statement: str) -> bytes:
        """Prepare `statement` on the connection; its name."""
        name = f"leek_{len(self._names) + 1}".encode()
        self._pgconn.send_prepare(name, self._text(statement))
        self._result()
        self._names[statement] = name
        return name

    def _text(self, statement: str) -> bytes:
        """`statement` as libpq takes it: $1, $2, ... for its placeholders."""
        text = self._texts.get(statement)
        if text is None:
            if _PERCENT.search(statement):
                raise ValueError(
                    f"a statement sent directly binds %s and nothing else: {statement}"
                )
            numbers = iter(range(1, statement.count("%s") + 1))
            text = _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", statement).encode()
            self._texts[statement] = text
        return text

    def _result(self) -> Any:
        """Wait for the statement sent, and its one result; psycopg's error
        for a statement the server refused, OperationalError for a
        connection that broke (as psycopg raises them)."""
        pgconn = self._pgconn
        while pgconn.flush():  # 1: more to send, once the socket takes it
            self._writable.poll()
        if pgconn.is_busy():
            self._await()
        result = error = None
        while (got := pgconn.get_result()) is not None:
            if got.status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = errors.error_from_result(got, encoding=self._encoding)
            elif result is None:
                result = got
        if error is not None:
            raise error
        if result is None or result.status not in DONE:
            said = pgconn.error_message.decode(self._encoding, "replace")
            raise errors.OperationalError(f"a statement sent directly had no result: {said!r}")
        return result

    def _await(self) -> None:
        """Wait until the whole result is read: polled first, while the
        recent answers came within the spin, else slept on."""
        pgconn = self._pgconn
        began = time.perf_counter()
        if self.spin and self._wait < self.spin and RUNS.still():
            alone(self._answered, self.spin, AnswerSpins)
        while pgconn.is_busy():
            self._readable.poll()
            pgconn.consume_input()
        self._wait += (time.perf_counter() - began - self._wait) * WAIT_WEIGHT

    def _answered(self) -> bool | None:
        """True once the whole result is read, else None (a poll of `until`)."""
        pgconn = self._pgconn
        pgconn.consume_input()
        return None if pgconn.is_busy() else True

    def _encode(self, value: Any) -> bytes | None:
        """`value` as libpq sends it: text, but bytes as they are (binary)."""
        kind = type(value)
        if value is None:
            return None
        if kind is bytes:
            return value  # type: ignore[no-any-return]
        if kind is str:
            if "\0" in value:  # libpq would end a text value at its first NUL
                raise errors.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
            return value.encode(self._encoding)  # type: ignore[no-any-return]
        if kind is bool:
            return b"t" if value else b"f"
        if kind is int or kind is uuid.UUID:
            return str(value).encode()
        if kind is float:
            return repr(value).encode() if math.isfinite(value) else _UNBOUNDED[str(value)]
        if kind is datetime:
            if value.utcoffset() is None:
                raise TypeError(f"a naive datetime has no place in a row: {value!r}")
            return value.isoformat().encode()  # type: ignore[no-any-return]
        raise TypeError(f"a statement sent directly does not send {kind.__name__} values")


#: The text of the floats that are not finite, as PostgreSQL reads them.
_UNBOUNDED = {"inf": b"Infinity", "-inf": b"-Infinity", "nan": b"NaN"}
