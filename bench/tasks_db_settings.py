"""Django settings for the django-tasks-db peer: its database backend and nothing else.

BENCH_TASKS_DB_URL names the database (a SQLite file or PostgreSQL). SQLite gets
the same tuning leek's SQLite runs with: WAL, synchronous=NORMAL, IMMEDIATE
transactions and a 20 s busy timeout.
"""

from __future__ import annotations

import environ

env = environ.Env()

SECRET_KEY = "bench-only-not-secret"  # noqa: S105
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django_tasks", "django_tasks_db"]
DATABASES = {"default": env.db("BENCH_TASKS_DB_URL", default="sqlite:///tasks-db-bench.sqlite3")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_tasks": {"level": "WARNING"}, "django_tasks_db": {"level": "WARNING"}},
}
