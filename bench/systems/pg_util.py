"""The PostgreSQL server the database-backed systems share, and their databases on it."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from bench.common import Skip

#: Server address and role; each system gets a database of its own on it.
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")


def url_for(database: str) -> str:
    return f"{PG_URL.rstrip('/')}/{database}"


def require_database(database: str) -> str:
    """Create `database` unless it exists; raise Skip when PostgreSQL is unreachable.

    Returns the server's version.
    """
    try:
        import psycopg
    except ImportError as exc:
        raise Skip("psycopg is not installed") from exc
    url = urlparse(PG_URL)
    last: Exception | None = None
    for maintenance in ("postgres", "test", "template1"):
        try:
            conn = psycopg.connect(url_for(maintenance), autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as exc:
            last = exc
            if "does not exist" in str(exc):
                continue
            break
        with conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{database}"')  # noqa: S608 - a fixed name
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    where = f"{url.hostname}:{url.port or 5432}"
    reason = str(last).strip().splitlines()[0] if last else "no maintenance database"
    raise Skip(f"PostgreSQL is not reachable at {where} ({reason})")


def synchronous_commit(database: str) -> str:
    import psycopg

    with psycopg.connect(url_for(database)) as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    return f"PostgreSQL synchronous_commit={row[0] if row else '?'}"


def checkpoint(database: str) -> None:
    """Write out what earlier work left in PostgreSQL's buffers now, so the
    system measured next does not pay for it (a checkpoint that the time or
    the write-ahead log's size sets off spreads its writes over minutes)."""
    import psycopg

    with psycopg.connect(url_for(database), autocommit=True) as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass  # not a superuser: the server checkpoints on its own schedule
