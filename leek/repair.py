"""Deprecated: the repair functions live in `leek.cli.repair`; import them from there."""

import warnings

from .cli.repair import forget_brokers, purge, requeue, retry_failed

__all__ = ["forget_brokers", "purge", "requeue", "retry_failed"]

warnings.warn(
    "leek.repair is deprecated: import requeue, retry_failed, purge and forget_brokers "
    "from leek.cli.repair",
    DeprecationWarning,
    stacklevel=2,
)
