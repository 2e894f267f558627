"""The fields of leek's log records, and the JSON lines `leek start` can write.

Every record leek logs about a task carries its fields in ``extra``, so that
any formatter or handler (python-json-logger, Sentry's logging integration)
finds them as attributes of the record; `task_extra` builds that dict. The
message keeps the same facts as key=value text, for people and for the text
format.

With LOG_FORMAT "json", the handler `leek start` adds (leek.cli) writes each
record as one JSON object on a line (`JsonFormatter`, the standard library's
json: no dependency). Every line has these keys, null when the record lacks
the field:

    time         ISO 8601, UTC, to the millisecond
    level        INFO, WARNING, ERROR, ...
    logger       the logger's name: leek.server.workers, leek.security, ...
    message      the message as the text format writes it
    action       the event's stable name: task_succeeded, broker_started, ...
    task_id      the task's id
    task         its dotted name
    queue        its queue
    attempt      the attempt's number, from 1
    duration_ms  how long a finished attempt ran
    node         the broker's name (NODE_NAME, else <hostname>:<port>)

A record about an error adds ``exc_type`` (the exception's dotted path),
``exc_message`` and ``traceback``: the task's own error for a failed attempt,
else the exception the record was logged with. Records without an error have
none of the three.

`NodeFilter` gives each record that passes it the broker's name as ``node``;
`leek start` puts one on its handler, and a project's own handler can take one
too.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

#: The keys every JSON line has, after time, level, logger and message.
FIELDS = ("action", "task_id", "task", "queue", "attempt", "duration_ms", "node")
#: The keys a record about an error adds.
ERROR_FIELDS = ("exc_type", "exc_message", "traceback")
#: The values LOG_FORMAT takes.
FORMATS = ("text", "json")
#: The text format's layout.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def task_extra(
    action: str,
    task_id: uuid.UUID | str | None = None,
    name: str | None = None,
    queue: str | None = None,
    attempt: int | None = None,
    duration_ms: float | None = None,
    exc_type: str | None = None,
    exc_message: str | None = None,
    traceback: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a record about a task: `action` and the fields given
    (None leaves a field out); the task's name goes in as ``task``."""
    extra: dict[str, Any] = {"action": action}
    if task_id is not None:
        extra["task_id"] = str(task_id)
    if name is not None:
        extra["task"] = name
    if queue is not None:
        extra["queue"] = queue
    if attempt is not None:
        extra["attempt"] = attempt
    if duration_ms is not None:
        extra["duration_ms"] = round(duration_ms, 3)
    if exc_type:
        extra["exc_type"] = exc_type
        extra["exc_message"] = exc_message or ""
        extra["traceback"] = traceback or ""
    return extra


def duration_ms(started: float, finished: float) -> float:
    """Milliseconds between two time.time() readings."""
    return (finished - started) * 1000.0


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, with the keys the module lists."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            line[key] = getattr(record, key, None)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            kind = type(exc)
            line["exc_type"] = f"{kind.__module__}.{kind.__qualname__}"
            line["exc_message"] = str(exc)
            line["traceback"] = self.formatException(record.exc_info)
        elif getattr(record, "exc_type", None):
            for key in ERROR_FIELDS:
                line[key] = getattr(record, key, "")
        return json.dumps(line, default=str, ensure_ascii=False)


class NodeFilter(logging.Filter):
    """Gives every record the broker's name as ``node``, unless it has one."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            record.node = self.node
        return True


def handler(log_format: str, node: str) -> logging.Handler:
    """The stderr handler `leek start` adds: `log_format` "text" or "json",
    each record stamped with `node`."""
    if log_format not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, got {log_format!r}")
    stream = logging.StreamHandler()
    stream.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    stream.addFilter(NodeFilter(node))
    return stream
