"""Every error leek raises. Each class's docstring is its default message."""

from __future__ import annotations

import signal
from typing import Any

from django.core.exceptions import ImproperlyConfigured


class LeekError(Exception):
    """leek failed."""

    def __init__(self, message: str | None = None, *args: Any) -> None:
        super().__init__(message or (self.__doc__ or "").strip(), *args)


class ProtocolError(LeekError):
    """A frame broke the wire protocol."""


class BadSignature(ProtocolError):
    """A frame's signature does not match the shared secret."""


class FrameTooLarge(ProtocolError):
    """A frame is larger than MAX_FRAME allows."""


class ReflectedFrame(BadSignature):
    """A frame is signed with this side's own sending key: one of its frames, sent back."""


class StaleFrame(ProtocolError):
    """A frame is stamped outside the broker's replay window, or before the broker started."""

    def __init__(self, message: str | None = None, *, nonce: bytes = b"") -> None:
        super().__init__(message)
        #: The refused frame's nonce (its signature was good): the reply names it.
        self.nonce = nonce


class ReplayedFrame(StaleFrame):
    """A frame's nonce was seen before: the frame is a replay."""


class AppNotInstalled(LeekError, ImproperlyConfigured):
    """INSTALLED_APPS lacks "leek": add "leek" to it, then run `manage.py migrate`."""


class SettingsUnavailable(LeekError):
    """The `leek` command found no Django settings module it could import."""


class BrokerUnavailable(LeekError):
    """No broker could be reached."""


class AuthenticationFailed(LeekError):
    """The broker rejected this client's signature: LEEK_SECRET differs between them."""


class NodeNameInUse(LeekError):
    """A live broker already runs under this node name: give each broker its own LEEK_NODE_NAME."""


class DatabaseUnavailable(LeekError):
    """The broker cannot reach its database."""


class BrokerError(LeekError):
    """The broker answered with an error."""


class CommitFailed(BrokerError):
    """The broker could not commit the push: its database refused or failed the write."""


class TaskNotReady(LeekError):
    """The task has not finished yet."""


class TaskCancelled(LeekError):
    """The task was cancelled: before it ran, or while it ran when asked to stop."""


class TaskExpired(LeekError):
    """The task expired before it started: it never ran."""


class TaskFailed(LeekError):
    """The task failed."""

    def __init__(
        self, message: str | None = None, *, remote_type: str = "", traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = message or ""
        self.traceback = traceback

    def __str__(self) -> str:
        head = (
            f"{self.remote_type}: {self.remote_message}"
            if self.remote_type
            else self.remote_message
        )
        return f"{head}\n\nRemote traceback:\n{self.traceback}" if self.traceback else head


class TaskTimeout(BaseException):  # noqa: N818 - named for what happened, like TimeoutError
    """The task ran past its time limit.

    A BaseException, like KeyboardInterrupt: a task's ``except Exception``
    does not swallow its time limit."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class WorkerLost(LeekError):
    """The process running the task died before the task ended."""

    def __init__(self, message: str | None = None, *, exitcode: int | None = None) -> None:
        super().__init__(message)
        #: The process's exit status, or minus the signal that killed it (as
        #: multiprocessing gives it); None when unknown.
        self.exitcode = exitcode

    @classmethod
    def of(cls, exitcode: int | None) -> WorkerLost:
        """The error for a process that ended with `exitcode`."""
        if exitcode is None:
            how = "for an unknown reason"
        elif exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = f"signal {-exitcode}"
            how = f"killed by {name} ({-exitcode})"
        else:
            how = f"exited with status {exitcode}"
        return cls(f"the worker process running the task {how}", exitcode=exitcode)


class WorkerUnavailable(LeekError):
    """A worker process cannot start."""

    def __init__(self, message: str | None = None, *, reported: bool = False) -> None:
        super().__init__(message)
        #: True when the process itself said why (its traceback is the message),
        #: False when it ended or hung before it could say anything.
        self.reported = reported


class Interrupted(LeekError):
    """The task's broker stopped while the task ran past its grace; the attempt counts, and
    the task runs again while it has retries left."""


class OutcomeNotStored(LeekError):
    """The database refused the task's outcome; the task failed instead."""


class PayloadError(LeekError):
    """A task's payload could not be pickled or unpickled."""


class Retry(LeekError):  # noqa: N818 - the name users raise from a task, like Celery's Retry
    """Run this task again later."""

    def __init__(self, countdown: float | None = None, message: str | None = None) -> None:
        super().__init__(message)
        self.countdown = countdown
