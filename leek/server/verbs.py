"""The broker as its connections see it: the `Endpoint` of tcp.py.

A push (intake.PUSHES, and links.VERB for linked steps) is queued for the
commit and answered once its tasks are committed; every other verb is in the
table `Verbs.table`: ``cancel``, ``ping``, ``waiting``, ``handled``,
``stats``, ``sweep`` (adopt spooled tasks now), ``stop`` and ``reload``. The
verbs in `quick` read no database, so the event loop answers them on its own
thread (loop.py); the others are answered on a thread aside.

A stopping broker (`drain`) serves no new request: a connection's next one
closes it, and the client sends it again, to this broker's next life or to
another. The pushes already read are answered first, once committed, within
REPLIES_AT_STOP: a client whose push is committed hears so from the broker
that committed it rather than sending it again.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import links, report
from .groupcommit import Gathering
from .intake import PUSHES
from .tcp import Limits, Reply

if TYPE_CHECKING:
    from .broker import Broker

#: Seconds a stopping broker waits for the replies it owes: the pushes it read,
#: still to be committed (a lock held elsewhere may hold their write back).
REPLIES_AT_STOP = 5.0


class Verbs:
    """What each request of a connection does to the broker."""

    def __init__(self, broker: Broker, limits: Limits) -> None:
        self.broker = broker
        self.limits = limits
        #: Set when the broker stops: a connection's next request closes it.
        self.closing = False
        self._owed = 0  # pushes read and not answered yet
        self._answered = threading.Condition()
        self.pushes = PUSHES | {links.VERB}
        #: The verbs answered on the event loop's thread: they read no database.
        self.quick = frozenset({"ping", "waiting", "handled", "stop"})
        self.table: dict[str, Callable[[Any], Any]] = {
            "ping": self.ping,
            "waiting": self.waiting,
            "handled": self.handled,
            "cancel": self.cancel,
            "stats": self.stats,
            "sweep": self.sweep,
            "stop": self.stop,
            "reload": self.reload,
        }

    def answer(self, verb: str, data: Any) -> Any:
        """The value of any verb but the pushes (see `push`)."""
        handler = self.table.get(verb)
        if handler is None:
            known = ", ".join(sorted([*self.pushes, *self.table]))
            raise ValueError(f"unknown verb {verb!r}: expected one of {known}")
        return handler(data)

    def push(self, verb: str, data: Any, reply: Reply) -> None:
        """Insert the tasks of a push; once they are committed, `reply` gets
        the reply's value (see Intake.reply), or the error. Counted as owed
        (`drain`) until the reply is sent, or the push is refused here."""
        settle = self._owe()

        def answer(value: Any, error: BaseException | None) -> None:
            try:
                reply(value, error)
            finally:
                settle()

        try:
            if verb == links.VERB:
                self._push_steps(data, answer)
            else:
                self._push_tasks(verb, data, answer)
        except BaseException:  # refused before it was queued: the peer answers it
            settle()
            raise

    def _push_tasks(self, verb: str, data: Any, reply: Reply) -> None:
        broker = self.broker
        intake, metrics = broker.intake, broker.metrics
        tasks = intake.tasks(verb, data)

        def committed(inserted: Any, error: BaseException | None) -> None:
            metrics.pushed(tasks, error)
            reply(None if error is not None else intake.reply(verb, tasks), error)

        broker.store.insert(tasks, committed)

    def _push_steps(self, data: Any, reply: Reply) -> None:
        """A chain's, group's or chord's tasks (links.py); once they are
        committed, route the first steps and reply with every id."""
        broker = self.broker
        tasks, linked, value = links.steps(broker.intake, data)

        def committed(ready: Any, error: BaseException | None) -> None:
            broker.metrics.pushed(tasks, error)
            if error is None and ready:
                broker.route(ready)
            reply(None if error is not None else value, error)

        broker.store.insert_steps(tasks, linked, committed)

    def gathered(self) -> Gathering:
        """Within it, the pushes this thread makes share one commit, at its end."""
        return self.broker.store.gathered()

    def _owe(self) -> Callable[[], None]:
        """Count a push read and not answered yet; what to call when its reply
        is sent, or it never will be (a second call does nothing)."""
        owed = [self]  # emptied by the first call
        with self._answered:
            self._owed += 1

        def settle() -> None:
            with self._answered:
                if owed:
                    owed.clear()
                    self._owed -= 1
                    if not self._owed:
                        self._answered.notify_all()

        return settle

    def drain(self, timeout: float = REPLIES_AT_STOP) -> int:
        """Serve no new request, and wait up to `timeout` seconds for the
        replies owed to the pushes already read; how many are still owed."""
        self.closing = True
        with self._answered:
            self._answered.wait_for(lambda: not self._owed, timeout)
            return self._owed

    def frame_rejected(self, error: BaseException) -> None:
        self.broker.rejected += 1
        self.broker.metrics.frame_rejected(error)

    # -- the verbs -----------------------------------------------------------

    def ping(self, data: Any = None) -> dict[str, Any]:
        ok, message = self.broker.healthy()
        return {"ok": ok, "message": message}

    def handled(self, data: Any = None) -> int:
        queue = (data or {}).get("queue")
        handled = self.broker.lanes.handled()
        return handled[queue] if queue else sum(handled.values())

    def waiting(self, data: Any = None) -> int:
        queue = (data or {}).get("queue")
        broker = self.broker
        counts = broker.lanes.counts() + Counter(broker.delayed.counts()) + broker.rates.counts()
        return counts[queue] if queue else sum(counts.values())

    def cancel(self, data: Any) -> bool:
        """Cancel a task so that it never runs (cancel.py); with "running",
        stop it too if it runs here. False when it was not cancelled."""
        return self.broker.cancels(uuid.UUID(str(data["id"])), bool(data.get("running", False)))

    def stats(self, data: Any = None) -> dict[str, Any]:
        return report.stats(self.broker)

    def sweep(self, data: Any = None) -> int:
        """A client spooled: adopt spooled tasks now (Broker.sweep), and claim
        the unowned tasks due (share.py)."""
        self.broker.share.poke()
        return self.broker.sweep()

    def stop(self, data: Any = None) -> str:
        self.broker.reloads.cancel()  # a stop during a reload's drain wins
        threading.Timer(0.05, self.broker.request_stop).start()
        return "stopping"

    def reload(self, data: Any = None) -> str:
        """Reload gracefully (reexec.py): "reloading", or what is under way instead."""
        broker = self.broker
        if broker.request_reload("the reload verb"):
            return "reloading"
        return f"already {'reloading' if broker.reloads.reason else 'stopping'}"
