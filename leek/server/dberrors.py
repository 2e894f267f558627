"""Which database errors are the database's own and which an op's.

A write that fails is tried again only when trying again can succeed. A
transient error is the database's: the connection was lost, the database is
locked or a lock wait timed out, a serialization failure, a server shutting
down. A permanent error is the op's own: PostgreSQL refuses a value (a NUL in
text, a name past its column's length, a number out of range: DataError) or a
constraint fails (a row gone: IntegrityError). The same op would fail the same
way however often it were written. Errors that are not the database's at all
(a value the driver cannot send, a bug in a write) are permanent too.
"""

from __future__ import annotations

from django.db import DatabaseError, IntegrityError, InterfaceError, connection
from django.db import DataError as DjangoDataError

#: What a write can raise when the database fails: Django's wrapped errors and,
#: from the raw cursor the hot path uses, the driver's own.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseError,
    InterfaceError,
    *([connection.Database.Error] if hasattr(connection, "Database") else []),
)
#: The database errors of an op's own. Every other one is transient:
#: ProgrammingError and InternalError too, which mean a schema or a server in
#: trouble, for the broker to report rather than an op to drop.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    DjangoDataError,
    IntegrityError,
    *(
        [connection.Database.DataError, connection.Database.IntegrityError]
        if hasattr(connection, "Database")
        else []
    ),
)


def transient(exc: BaseException) -> bool:
    """Whether a write that raised `exc` may succeed when tried again: the
    database failed, not the op (see the module's docstring)."""
    return isinstance(exc, DATABASE_ERRORS) and not isinstance(exc, PERMANENT_ERRORS)


def locked(exc: BaseException) -> bool:
    """Whether a write raised `exc` because another connection holds a lock
    it waited for: SQLite's write lock, past its busy timeout, or on
    PostgreSQL any lock, past `lock_timeout` (SQLSTATE 55P03)."""
    if not isinstance(exc, DATABASE_ERRORS):
        return False
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return getattr(cause, "sqlstate", None) == "55P03" or "database is locked" in str(exc)
