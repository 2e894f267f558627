"""The test settings with this app installed: its tasks module is discovered."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.server.trust_app.apps.TrustConfig"]
