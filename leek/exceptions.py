"""Every error leek raises. Each class's docstring is its default message."""

from __future__ import annotations

from typing import Any


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


class TaskNotReady(LeekError):
    """The task has not finished yet."""


class TaskCancelled(LeekError):
    """The task was cancelled before it ran."""


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


class TaskTimeout(LeekError):
    """The task ran past its time limit."""


class Interrupted(LeekError):
    """The task's broker stopped while the task ran; it runs again."""


class PayloadError(LeekError):
    """A task's payload could not be pickled or unpickled."""


class Retry(LeekError):  # noqa: N818 - the name users raise from a task, like Celery's Retry
    """Run this task again later."""

    def __init__(self, countdown: float | None = None, message: str | None = None) -> None:
        super().__init__(message)
        self.countdown = countdown
