"""The rate limits' token buckets: one row each in leek_ratelimit, shared by every broker.

A bucket holds up to `burst` tokens and gains `rate` a second. A start takes
one token with one conditional UPDATE that refills the bucket by the time
elapsed on the database's own clock (``clock_timestamp()`` on PostgreSQL,
``julianday('now')`` on SQLite; a broker's clock never enters it) and takes
the token only when one is there. The row's lock on PostgreSQL, and the one
writer on SQLite, serialise the brokers: two of them never both take the last
token. A token is reported taken only once its write is committed: on
PostgreSQL the statement runs on the worker's own connection, in autocommit,
so it holds the row's lock for itself alone (never across a batch, where two
takes in another order could deadlock); on SQLite it runs in a batch of the
store's tasks lane that the worker waits for, as a second writer would only
wait for the first.

The time is stored as seconds since the epoch, as the database tells it. A
bucket that does not exist yet is created full, less the token taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..rows import Dialect
from .cursor import raw_cursor

if TYPE_CHECKING:
    from . import Store

#: Rows of leek_ratelimit the stats show.
SHOWN = 100


@dataclass(slots=True)
class Bucket:
    """A rate limit as a start asks for its token: its key and figures."""

    key: str  # "task:<name>" or "queue:<name>"
    rate: float  # tokens gained per second
    burst: float  # tokens held at most


@dataclass(slots=True)
class Taken:
    """What a take found: the tokens were taken or not, and the seconds until
    the next token is due (after this one, when it was taken)."""

    ok: bool
    wait: float


@dataclass(slots=True)
class Level:
    """A bucket as the stats show it."""

    key: str
    rate: float
    burst: float
    tokens: float


class BucketStatements:
    """The statements on leek_ratelimit, in one database's SQL."""

    def __init__(self, d: Dialect) -> None:
        if d.sqlite:
            now = "((julianday('now') - 2440587.5) * 86400.0)"
            least, greatest = "min", "max"
        else:
            now = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
            least, greatest = "LEAST", "GREATEST"

        def level(burst: str, rate: str) -> str:
            return f"{least}({burst}, tokens + {greatest}(0, {now} - updated_at) * {rate})"

        bound = level("%s", "%s")
        q = d.sql
        self.take = q(
            f"UPDATE leek_ratelimit SET tokens = {bound} - 1, "
            f"updated_at = {greatest}(updated_at, {now}), rate = %s, burst = %s "
            f"WHERE key = %s AND {bound} >= 1 RETURNING tokens"
        )
        self.create = q(
            "INSERT INTO leek_ratelimit (key, rate, burst, tokens, updated_at) "
            f"VALUES (%s, %s, %s, %s, {now}) ON CONFLICT (key) DO NOTHING"
        )
        self.level = q(f"SELECT {bound} FROM leek_ratelimit WHERE key = %s")
        self.give_back = q(
            f"UPDATE leek_ratelimit SET tokens = {least}(burst, tokens + 1) WHERE key = %s"
        )
        self.levels = (
            f"SELECT key, rate, burst, {level('burst', 'rate')} FROM leek_ratelimit "
            f"ORDER BY key LIMIT {SHOWN}"
        )


class Buckets:
    """Takes tokens from the buckets and reads them for the stats."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = BucketStatements(store.dialect)

    def take(self, buckets: Sequence[Bucket], timeout: float | None = None) -> Taken:
        """Take one token from each of `buckets`, or from none of them, and
        say so once the write is committed. Raises the database's error, or
        TimeoutError when SQLite's writer has not committed it within `timeout`."""

        def take(cursor: Any, d: Dialect) -> Taken:
            return _take(cursor, self.sql, buckets)

        if self.store.dialect.sqlite:
            return cast(Taken, self.store.call(take).wait(timeout))
        cursor = raw_cursor()  # autocommit: each statement is committed as it returns
        try:
            return _take(cursor, self.sql, buckets)
        finally:
            cursor.close()

    def levels(self) -> list[Level]:
        """Every bucket (the first SHOWN by key) with the tokens it holds now."""
        cursor = raw_cursor()
        try:
            cursor.execute(self.sql.levels)
            return [Level(str(k), float(r), float(b), float(t)) for k, r, b, t in cursor.fetchall()]
        finally:
            cursor.close()


def _take(cursor: Any, sql: BucketStatements, buckets: Sequence[Bucket]) -> Taken:
    wait = 0.0
    for i, b in enumerate(buckets):
        left, level = _take_one(cursor, sql, b)
        if left is None:
            for earlier in buckets[:i]:
                cursor.execute(sql.give_back, (earlier.key,))
            return Taken(False, max(0.0, (1.0 - level) / b.rate))
        wait = max(wait, (1.0 - left) / b.rate)
    return Taken(True, wait)


def _take_one(cursor: Any, sql: BucketStatements, b: Bucket) -> tuple[float | None, float]:
    """(the tokens left in bucket `b` once one is taken, 0) or, when it
    has none to give, (None, the tokens it holds)."""
    take = (b.burst, b.rate, b.rate, b.burst, b.key, b.burst, b.rate)
    cursor.execute(sql.take, take)
    row = cursor.fetchone()
    if row is not None:
        return float(row[0]), 0.0
    cursor.execute(sql.level, (b.burst, b.rate, b.key))
    row = cursor.fetchone()
    if row is not None:
        return None, float(row[0])
    cursor.execute(sql.create, (b.key, b.rate, b.burst, b.burst - 1))
    if cursor.rowcount == 1:
        return b.burst - 1, 0.0
    cursor.execute(sql.take, take)  # another broker created it meanwhile
    row = cursor.fetchone()
    return (float(row[0]), 0.0) if row is not None else (None, 0.0)
