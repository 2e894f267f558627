"""A web process for the outbox tests, killed right after its transaction commits.

Run as ``python -m tests.client.web_process GROUP PATH`` with the settings of a
broker under test (tests.conftest.broker_env). It pushes a task in a block
that rolls back, then, in a block that commits, creates the auth group GROUP
and pushes ``append_line(PATH, GROUP)``. A commit hook registered before that
push kills the process with SIGKILL: it runs first, right after COMMIT,
before any later hook (the push's own, in on_commit mode) can send anything.
It prints the id of each push, the rolled-back one first, as it makes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import django


def main(group: str, path: str) -> None:
    django.setup()
    from django.contrib.auth.models import Group
    from django.db import transaction

    import leek
    from tests import tasks

    with contextlib.suppress(RuntimeError), transaction.atomic():
        Group.objects.create(name=f"{group}-rolled-back")
        print(leek.enqueue(tasks.append_line, (path, "rolled back")).id, flush=True)  # noqa: T201
        raise RuntimeError("roll back")
    with transaction.atomic():
        transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
        Group.objects.create(name=group)
        print(leek.enqueue(tasks.append_line, (path, group)).id, flush=True)  # noqa: T201
    sys.exit("still alive after the commit")


if __name__ == "__main__":
    main(*sys.argv[1:3])
