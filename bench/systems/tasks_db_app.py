"""The noop and the burn as django-tasks tasks, for the db_worker to import."""

from __future__ import annotations

from django_tasks import task

from bench import tasks


@task()
def noop() -> None:
    tasks.noop()


@task()
def burn(loops: int) -> None:
    tasks.burn(loops)
