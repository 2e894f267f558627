"""The broker's reads, each on the calling thread's own Django connection.

Writes go through the group commit (store.py); these read what it committed:
the payloads a worker loads in pages, and at start the tasks this broker owns.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

from django.db import connection

from .rows import Dialect, Job, Ready
from .writer import raw_cursor


def jobs(d: Dialect, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, tuple[str, Job]]:
    """Status and job of each task in `ids` that still exists."""
    keys = [d.pk(i) for i in ids]
    if not keys:
        return {}
    cursor = raw_cursor()
    try:
        cursor.execute(
            "SELECT id, status, payload, name, attempts, max_retries, timeout "  # noqa: S608
            "FROM leek_task WHERE id IN (" + ", ".join([d.ph] * len(keys)) + ")",
            keys,
        )
        return {
            d.read_uuid(i): (s, Job(bytes(p), n, a, m, t))
            for i, s, p, n, a, m, t in cursor.fetchall()
        }
    finally:
        cursor.close()


def owned(d: Dialect, node: str, page: int = 5000) -> Iterator[list[Ready]]:
    """Every unfinished task this broker owns, oldest first, in pages.

    One query: its snapshot is taken when the generator is first advanced,
    so tasks inserted or adopted after that are not in it (they reach the
    queues on their own), and the broker can serve while the pages load.
    On PostgreSQL the rows stay on the server (a cursor WITH HOLD) until
    their page is fetched, rather than all arriving in the broker at once."""
    if d.sqlite:
        cursor = raw_cursor()
    else:
        import psycopg

        connection.ensure_connection()
        cursor = psycopg.ServerCursor(connection.connection, "leek_owned", withhold=True)
    try:
        cursor.execute(
            d.sql(
                "SELECT id, priority, queue, run_after FROM leek_task "
                "WHERE broker = %s AND status IN ('queued', 'running') ORDER BY queued_at"
            ),
            (node,),
        )
        yield []  # the snapshot is taken: the caller may start serving
        while rows := cursor.fetchmany(page):
            yield [Ready(d.read_uuid(r[0]), r[1], r[2], d.read_time(r[3])) for r in rows]
    finally:
        cursor.close()
