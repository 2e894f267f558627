"""Rate limits as people write them: "N/s", "N/m" or "N/h".

A rate limit allows N starts per second, minute or hour, counted by a token
bucket in the database (leek/server/limits.py) that every broker sharing the
database takes from. The bucket holds BURST tokens and gains one every
period/N seconds: a task whose bucket is empty waits, queued, for its next
token. Both the client (when it builds a push) and the broker (when one
arrives) check a limit here; either raises a ValueError that says what was
wrong and what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Seconds per unit of a rate limit.
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: Tokens a bucket holds: starts of a limited task that may follow each other
#: at once after a quiet spell, before the next has to wait its turn.
BURST = 1
#: The largest N of "N/unit": one start per microsecond is already beyond
#: what one database round trip per start allows.
MOST = 1_000_000

_FORM = re.compile(r"\s*(\d+)\s*/\s*([smh])\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` starts per `period` seconds."""

    count: int
    period: float

    @property
    def per_second(self) -> float:
        """Tokens the bucket gains per second."""
        return self.count / self.period

    @property
    def burst(self) -> int:
        return BURST

    def __str__(self) -> str:
        unit = next(u for u, seconds in UNITS.items() if seconds == self.period)
        return f"{self.count}/{unit}"


def parse(value: Any) -> Rate:
    """The Rate of "N/s", "N/m" or "N/h" (N a whole number from 1 to MOST);
    ValueError for anything else."""
    match = _FORM.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f'rate_limit must be "N/s", "N/m" or "N/h" (N starts per second, '
            f"minute or hour), got {value!r}"
        )
    count = int(match.group(1))
    if not 1 <= count <= MOST:
        raise ValueError(f"rate_limit must allow from 1 to {MOST} starts, got {value!r}")
    return Rate(count, UNITS[match.group(2)])


def field(value: Any) -> str:
    """A task's rate_limit as its row stores it: "" for none, else the
    limit written as `parse` reads it back; ValueError as `parse` raises."""
    if value is None or value == "":
        return ""
    return str(parse(value))


def of_queues(queues: Any) -> dict[str, Rate]:
    """The limit of each queue of LEEK["QUEUES"] that has a "rate_limit";
    ValueError naming the queue whose limit does not read."""
    found = {}
    for name, lane in (queues or {}).items():
        if isinstance(lane, dict) and lane.get("rate_limit"):
            try:
                found[str(name)] = parse(lane["rate_limit"])
            except ValueError as exc:
                raise ValueError(f"LEEK['QUEUES'][{name!r}] has {exc}") from exc
    return found


def text(per_second: float) -> str:
    """A bucket's rate of tokens a second as a limit is written ("10/m")."""
    for unit, seconds in UNITS.items():
        count = per_second * seconds
        if round(count, 6).is_integer():
            return f"{round(count)}/{unit}"
    return f"{per_second:g}/s"
