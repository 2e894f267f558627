"""An installed app whose tasks module defines a @leek.task, for the brokers of
tests/server/test_periodic_trust.py (settings: tests.server.trust_app.settings)."""
