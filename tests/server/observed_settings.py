"""The test settings of a broker whose signals and logs a test watches.

Every leek signal reaches the receivers of signal_receivers.py, and leek logs
at DEBUG, so the handler `leek start` adds writes a record for every step of
every task (leek.server.lifecycle)."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.server.signals_app.SignalsConfig"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"leek": {"level": "DEBUG"}},
}
