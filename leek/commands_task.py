"""Old home of `run_command`: rows stored before it moved to leek/calls.py pickle
it by this path, so the name stays importable here for as long as such rows can
exist. New payloads name `leek.calls.run_command`."""

from .calls import run_command

__all__ = ["run_command"]
