"""Tasks the fencing tests push: each run leaves a line naming its task, broker and attempt."""

from __future__ import annotations

import time
from pathlib import Path

from leek import current_task


def _record(runs: str) -> str:
    """Append "<task id> <broker> <attempt>" to `runs`; the broker's name."""
    me = current_task()
    assert me is not None
    with open(runs, "a") as handle:
        handle.write(f"{me.id} {me.node} {me.attempt}\n")
    return str(me.node)


def gate_for(gates: str, node: str, attempt: int) -> Path:
    """The file that lets attempt `attempt` on broker `node` end."""
    return Path(gates) / f"{node.replace(':', '_')}-{attempt}"


def held_per_broker(runs: str, gates: str) -> str:
    """Record the run, then wait until the gate of its broker and attempt is
    open (at most a minute); the broker's name."""
    node = _record(runs)
    me = current_task()
    assert me is not None
    deadline = time.monotonic() + 60
    while not gate_for(gates, node, me.attempt).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate of {node} was not opened")
        time.sleep(0.01)
    return node


def run_for(runs: str, seconds: float) -> str:
    """Record the run, then work `seconds`; the broker's name."""
    node = _record(runs)
    time.sleep(seconds)
    return node


def runs_of(path: Path) -> list[tuple[str, str, int]]:
    """The runs recorded in `path`: (task id, broker, attempt) each."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        task, node, attempt = line.split()
        found.append((task, node, int(attempt)))
    return found


def fail_after(runs: str, seconds: float) -> None:
    """Record the run, work `seconds`, then fail (to be retried)."""
    _record(runs)
    time.sleep(seconds)
    raise RuntimeError("failed after its work")
