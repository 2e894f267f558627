"""The noop as a django-tasks task, for the db_worker to import."""

from __future__ import annotations

from django_tasks import task

from bench import tasks


@task()
def noop() -> None:
    tasks.noop()
