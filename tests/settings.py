"""The bundled project, set up for the test suite.

The test database lives in a file (SQLite) or a real server (PostgreSQL, when
DATABASE_URL names one), because the brokers under test are other processes.
A broker started by the tests gets LEEK_BROKER_TEST_DB: the name of the test
database the test process created, which it then uses as its own.
"""

import os
import tempfile
from typing import Any

import django

from settings import *  # noqa: F403
from settings import DATABASES

_default = DATABASES["default"]
if _default["ENGINE"] == "django.db.backends.sqlite3":
    _default["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"leek-test-{os.getpid()}.sqlite3")
    }
else:
    # One test database per run, so runs side by side on one server never meet.
    _default["TEST"] = {"NAME": f"test_{_default['NAME']}_{os.getpid()}"}
if os.environ.get("LEEK_BROKER_TEST_DB"):
    _default["NAME"] = os.environ["LEEK_BROKER_TEST_DB"]

if os.environ.get("LEEK_TEST_BREAK_WORKER_PROCESS"):
    import multiprocessing
    import sys

    # A spawned process has a parent process; the forkserver runs as `python -c`.
    if multiprocessing.parent_process() is not None or sys.argv[:1] == ["-c"]:
        raise ImportError("these settings cannot be imported in a worker process (as a test asks)")

if os.environ.get("LEEK_TEST_CLOCK_SKEW"):
    # A broker whose own clock is off by this many seconds (tests/server/test_lease.py).
    import time

    _skew = float(os.environ["LEEK_TEST_CLOCK_SKEW"])
    _real_time = time.time
    time.time = lambda: _real_time() + _skew

# The periodic tests' rows, written as the admin writes them, run this task.
LEEK = {"PERIODIC_ALLOWED": ["tests.server.periodic_tasks.stamp"]}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Django 6.0 takes plain addresses and deprecates (name, address) pairs.
ADMINS = ["admins@example.com"] if django.VERSION >= (6,) else [("admins", "admins@example.com")]
_mail: dict[str, Any] = {"BACKEND": "django.core.mail.backends.locmem.EmailBackend", "OPTIONS": {}}
if os.environ.get("EMAIL_FILE_PATH"):  # a broker under test writes its mail there
    _mail = {
        "BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "OPTIONS": {"file_path": os.environ["EMAIL_FILE_PATH"]},
    }
if django.VERSION >= (6, 1):  # MAILERS replaces EMAIL_BACKEND and EMAIL_FILE_PATH
    MAILERS = {"default": _mail}
else:
    EMAIL_BACKEND = _mail["BACKEND"]
    if _mail["OPTIONS"]:
        EMAIL_FILE_PATH = _mail["OPTIONS"]["file_path"]
