"""How a push reaches a broker, and what keeps it when no broker commits it.

A push goes one of three ways (`send`):

    ==========================  =============================================
    made                        goes
    ==========================  =============================================
    outside atomic(), or with   to a broker at once (`deliver`)
    ON_COMMIT off
    inside atomic(),            to a broker once the transaction has
    ATOMIC_PUSH "on_commit"     committed (Django's on_commit)
    inside atomic(),            into the transaction itself, as a spooled
    ATOMIC_PUSH "outbox"        row; a broker is woken after the commit
    ==========================  =============================================

A push that no broker commits (none answers, one fails to commit it, or its
reply cannot be verified) is written to the database by the client itself
(spool.py) with FALLBACK "database", and raised with FALLBACK "raise". Once
its transaction has committed it is written to the database whatever
FALLBACK says: the caller's rows are committed, nothing can be raised to it,
and Django would skip the commit hooks that follow one that raises. Then only
a database write that fails too loses the task, and that is logged at ERROR
with the task ids and the traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, router, transaction

from .. import conf
from ..exceptions import (
    AppNotInstalled,
    AuthenticationFailed,
    BrokerUnavailable,
    CommitFailed,
)
from . import connection, counting
from .spool import outbox, spool, unbatch

logger = logging.getLogger(__name__)

#: What a push raises when no broker committed it.
UNCOMMITTED = (BrokerUnavailable, CommitFailed, AuthenticationFailed)
#: Ids a log line names at most when the tasks are safe in the database.
LOGGED_IDS = 10

#: The (transaction's, leek's) database pairs already warned about.
_warned: set[tuple[str, str]] = set()


def waits_for_commit(using: str | None = None) -> bool:
    """Whether a push made now takes effect when the surrounding transaction
    commits (ON_COMMIT, inside transaction.atomic()) rather than at once."""
    return bool(conf.get("ON_COMMIT")) and transaction.get_connection(using).in_atomic_block


def send(verb: str, data: Any, using: str | None = None) -> Any:
    """Send a push now, after the surrounding transaction commits, or in it
    (see the module's table). For an ``enqueue``, the id of the task it
    landed on (another task's, when that one holds its key), or None when
    it is sent after the commit.

    Raises AppNotInstalled when INSTALLED_APPS lacks leek: the results and the
    database fallback are its tables; ImproperlyConfigured for an unknown
    ATOMIC_PUSH."""
    # By its label first: is_installed reads every app, on every push.
    config = apps.app_configs.get("leek") if apps.apps_ready else None
    if (config is None or config.name != "leek") and not apps.is_installed("leek"):
        raise AppNotInstalled(
            "a push needs leek's tables (for its result, and to keep it when no broker "
            'answers), and INSTALLED_APPS lacks "leek": add "leek" to INSTALLED_APPS, '
            "then run `manage.py migrate`"
        )
    alias = using or DEFAULT_DB_ALIAS
    if not waits_for_commit(alias):
        return deliver(verb, data)
    if conf.atomic_push() == "outbox" and _tasks_on(alias):
        landed = _landed(verb, outbox(_messages(verb, data), alias))
        counting.pushed("outbox", verb, data)
        return landed

    def push_committed() -> None:
        after_commit(verb, data)

    # robust: should anything escape after_commit, the hooks after it still run
    transaction.on_commit(push_committed, using=alias, robust=True)
    return None


def deliver(verb: str, data: Any) -> Any:
    """Send a push to a broker now; when none commits it, write it to the
    database (FALLBACK "database") or raise why (FALLBACK "raise").

    Raises BrokerUnavailable, CommitFailed or AuthenticationFailed (with the
    database's error too when the fallback failed), and BrokerError when the
    broker refuses what the push holds. The value is the broker's reply, or
    for an ``enqueue`` kept in the database, the id of the task it landed on."""
    try:
        value = connection.call(verb, data, push=True)
        counting.pushed("sent", verb, data)
        return value
    except UNCOMMITTED as exc:
        if conf.get("FALLBACK") != "database":
            counting.pushed("failed", verb, data)
            raise
        return _landed(verb, _keep(verb, data, exc))


def after_commit(verb: str, data: Any) -> None:
    """Deliver a push whose transaction has committed. Never raises: what no
    broker committed, for any reason, is written to the database, and a task
    that cannot be written there either is logged as lost."""
    try:
        connection.call(verb, data, push=True)
        counting.pushed("sent", verb, data)
    except Exception as exc:
        try:
            _keep(verb, data, exc)
        except Exception:
            logger.exception(
                "task lost: no broker committed it after its transaction committed, "
                "and the database fallback failed tasks=%s error=%s",
                ",".join(m["id"] for m in _messages(verb, data)),
                exc,
                extra={"action": "task_lost"},
            )


def _landed(verb: str, held: dict[str, str]) -> str | None:
    """What `send` gives for a push written to the database: for an enqueue,
    the id of the task that holds its key, when another does."""
    if verb != "enqueue" or not held:
        return None
    return next(iter(held.values()))


def _keep(verb: str, data: Any, exc: Exception) -> dict[str, str]:
    """Write a push no broker committed to the database; raise `exc`'s kind,
    with both reasons, when that fails too. The value is spool's."""
    messages = _messages(verb, data)
    try:
        held = spool(messages)
    except Exception as db_exc:
        counting.pushed("failed", verb, data)
        kind = type(exc) if isinstance(exc, UNCOMMITTED) else BrokerUnavailable
        raise kind(
            f"{exc}; and the database fallback failed: {type(db_exc).__name__}: {db_exc}"
        ) from db_exc
    counting.pushed("spooled", verb, data)
    ids = [m["id"] for m in messages]
    more = f" and {len(ids) - LOGGED_IDS} more" if len(ids) > LOGGED_IDS else ""
    logger.log(
        # A reply that cannot be verified is a wrong secret, or someone on the way.
        logging.ERROR if isinstance(exc, AuthenticationFailed) else logging.WARNING,
        "no broker committed the push, task written to the database count=%s tasks=%s%s error=%s",
        len(ids),
        ",".join(ids[:LOGGED_IDS]),
        more,
        exc,
        extra={"action": "task_spooled"},
    )
    return held


def _tasks_on(alias: str) -> bool:
    """Whether leek's tasks are written to `alias`, the transaction's database:
    the outbox writes them in the transaction. When not, the push is sent
    after the commit, and a warning (once per pair of databases) says why."""
    from ..models import Task

    tasks = router.db_for_write(Task) or DEFAULT_DB_ALIAS
    if tasks == alias:
        return True
    if (alias, tasks) not in _warned:
        _warned.add((alias, tasks))
        logger.warning(
            'ATOMIC_PUSH "outbox" writes a task in its transaction, and leek\'s tasks are '
            "written to database %s while the transaction is on %s: pushes in it are "
            "sent after its commit instead",
            tasks,
            alias,
            extra={"action": "outbox_unavailable"},
        )
    return False


def _messages(verb: str, data: Any) -> list[dict[str, Any]]:
    """The tasks of a push, as the database fallback writes them."""
    if verb == "enqueue":
        return [data]
    if verb == "enqueue_batch":
        return unbatch(data)
    return list(data)
