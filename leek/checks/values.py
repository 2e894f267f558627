"""The checks of the LEEK settings' values: each setting a broker or a client
reads is of its type and range, and those that go together agree."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .. import conf, logs, ratelimit
from .exposure import check_exposure

#: The most seconds SPIN may be: past it a thread burns a core on a reply
#: that sleeping would catch as soon.
MAX_SPIN = 0.01
#: The most seconds SWITCH_INTERVAL may be.
MAX_SWITCH_INTERVAL = 0.1
#: The settings that take one of a few values: each key, its values, the
#: hint and the check's id.
CHOICES = (
    ("FALLBACK", ("database", "raise"), 'Use "database" or "raise".', "leek.E004"),
    ("POOL", ("threads", "processes"), 'Use "threads" or "processes".', "leek.E006"),
    ("PROCESS_START", ("forkserver", "spawn"), 'Use "forkserver" or "spawn".', "leek.E019"),
    ("LOG_FORMAT", logs.FORMATS, f"Use one of {', '.join(map(repr, logs.FORMATS))}.", "leek.E014"),
)
#: What a lane of LEEK["QUEUES"] may say.
LANE_KEYS = frozenset({"workers", "pool", "rate_limit", "prefetch"})


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    problem = conf.unreadable()
    if problem:  # the rest cannot be read
        return [
            checks.Error(
                f"{problem}.",
                hint="Give it a value of that kind, or unset it.",
                id="leek.E021",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for key in conf.unknown_keys():
        errors.append(
            checks.Error(
                f"LEEK has an unknown key {key!r}.",
                hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.",
                id="leek.E001",
            )
        )
    settings = conf.get_settings()
    for key, least in (
        ("WORKERS", 0),
        ("PORT", 1),
        ("MAX_FRAME", 1),
        ("MAX_TASKS_PER_CHILD", 0),
        ("MAX_MEMORY_PER_CHILD", 0),
        ("CHILD_NICE", 0),
        ("MAX_CONNECTIONS", 1),
        ("MAX_UNAUTHENTICATED", 1),
        ("REPLAY_NONCES", 1),
        ("MEMORY_DELAYED", 0),
        ("PREFETCH", 0),
    ):
        if not isinstance(settings[key], int) or settings[key] < least:
            errors.append(
                checks.Error(
                    f"LEEK[{key!r}] must be a whole number of at least {least}, "
                    f"got {settings[key]!r}.",
                    id="leek.E002",
                )
            )
    if conf.sqlite_synchronous() is None:
        errors.append(
            checks.Error(
                f"LEEK['SQLITE_SYNCHRONOUS'] is {settings['SQLITE_SYNCHRONOUS']!r}.",
                hint=f"Use one of {', '.join(conf.SYNCHRONOUS_MODES)}.",
                id="leek.E003",
            )
        )
    for key, allowed, hint, code in CHOICES:
        if settings[key] not in allowed:
            errors.append(checks.Error(f"LEEK[{key!r}] is {settings[key]!r}.", hint=hint, id=code))
    start_timeout = settings["PROCESS_START_TIMEOUT"]
    if isinstance(start_timeout, bool) or not isinstance(start_timeout, int | float):
        start_timeout = -1
    if not start_timeout > 0:
        errors.append(
            checks.Error(
                "LEEK['PROCESS_START_TIMEOUT'] must be seconds above 0, "
                f"got {settings['PROCESS_START_TIMEOUT']!r}.",
                id="leek.E019",
            )
        )
    errors += _check_reload(settings)
    errors += _check_queues(settings["QUEUES"])
    errors += check_exposure(settings)
    errors += _check_push_settings(settings)
    errors += _check_heartbeat(settings["HEARTBEAT_INTERVAL"], settings["HEARTBEAT_TIMEOUT"])
    errors += _check_spin(settings["SPIN"])
    errors += _check_switch_interval(settings["SWITCH_INTERVAL"])
    errors += _check_shutdown(settings["SHUTDOWN_GRACE"], settings["SHUTDOWN_TIMEOUT"])
    if not isinstance(settings["MAX_RETRIES"], int) or settings["MAX_RETRIES"] < 0:
        errors.append(
            checks.Error(
                f"LEEK['MAX_RETRIES'] must be zero or more, got {settings['MAX_RETRIES']!r}.",
                id="leek.E005",
            )
        )
    return errors


def _check_push_settings(settings: dict[str, Any]) -> list[checks.CheckMessage]:
    """leek.E012: the settings of the push path's guarantees, which would otherwise
    fail at the first push or the broker's first frame."""
    errors: list[checks.CheckMessage] = []
    for key in ("REPLAY_WINDOW", "WRITE_WAIT"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            errors.append(
                checks.Error(
                    f"LEEK[{key!r}] must be a number of seconds greater than zero, got {value!r}.",
                    id="leek.E012",
                )
            )
    if settings["ATOMIC_PUSH"] not in conf.ATOMIC_PUSHES:
        errors.append(
            checks.Error(
                f"LEEK['ATOMIC_PUSH'] is {settings['ATOMIC_PUSH']!r}.",
                hint=f"Use one of {', '.join(map(repr, conf.ATOMIC_PUSHES))}.",
                id="leek.E012",
            )
        )
    for key in ("ACCEPT_UNSIGNED_ROWS", "SPREAD"):
        if not isinstance(settings[key], bool):
            errors.append(
                checks.Error(
                    f"LEEK[{key!r}] must be True or False, got {settings[key]!r}.",
                    id="leek.E012",
                )
            )
    errors += _check_broker_backoff(settings["BROKER_BACKOFF"], settings["BROKER_BACKOFF_MAX"])
    return errors


def _check_broker_backoff(least: Any, most: Any) -> list[checks.CheckMessage]:
    """leek.E012: BROKER_BACKOFF and BROKER_BACKOFF_MAX, read at a broker's
    first failure, are seconds greater than zero, the first no more than the
    second."""
    errors: list[checks.CheckMessage] = []
    for key, value in (("BROKER_BACKOFF", least), ("BROKER_BACKOFF_MAX", most)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            errors.append(
                checks.Error(
                    f"LEEK[{key!r}] must be a number of seconds greater than zero, got {value!r}.",
                    id="leek.E012",
                )
            )
    if not errors and least > most:
        errors.append(
            checks.Error(
                f"LEEK['BROKER_BACKOFF'] ({least!r}) is greater than "
                f"LEEK['BROKER_BACKOFF_MAX'] ({most!r}).",
                hint="The first back-off of a broker must not exceed the longest.",
                id="leek.E012",
            )
        )
    return errors


def _check_spin(value: Any) -> list[checks.CheckMessage]:
    """leek.E017: SPIN is seconds from 0 to MAX_SPIN."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SPIN:
        return [
            checks.Error(
                f"LEEK['SPIN'] must be a number of seconds from 0 to {MAX_SPIN}, got {value!r}.",
                hint="It is how long a thread polls its socket for a reply before it sleeps: "
                "a few hundred microseconds (the default is 0.0003); 0 turns it off.",
                id="leek.E017",
            )
        ]
    return []


def _check_switch_interval(value: Any) -> list[checks.CheckMessage]:
    """leek.E018: SWITCH_INTERVAL is seconds above 0, to MAX_SWITCH_INTERVAL."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_SWITCH_INTERVAL
    ):
        return [
            checks.Error(
                "LEEK['SWITCH_INTERVAL'] must be a number of seconds above 0 and at most "
                f"{MAX_SWITCH_INTERVAL}, got {value!r}.",
                hint="It is how long a broker's thread may keep the interpreter lock from "
                "another that waits for it (the default is 0.0002; Python's own, 0.005).",
                id="leek.E018",
            )
        ]
    return []


def _check_shutdown(grace: Any, timeout: Any) -> list[checks.CheckMessage]:
    """leek.E020: SHUTDOWN_GRACE is seconds from 0, and SHUTDOWN_TIMEOUT more."""
    for key, value in (("SHUTDOWN_GRACE", grace), ("SHUTDOWN_TIMEOUT", timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            return [
                checks.Error(
                    f"LEEK[{key!r}] must be a number of seconds, 0 or more, got {value!r}.",
                    id="leek.E020",
                )
            ]
    if timeout <= grace:
        return [
            checks.Error(
                f"LEEK['SHUTDOWN_TIMEOUT'] ({timeout!r}) is not more than "
                f"LEEK['SHUTDOWN_GRACE'] ({grace!r}).",
                hint="A stop gives the running tasks the grace, then commits what waits; "
                "past the timeout it gives up and exits. Leave the timeout some seconds "
                "beyond the grace (the defaults are 30 and 40).",
                id="leek.E020",
            )
        ]
    return []


def _check_heartbeat(interval: Any, timeout: Any) -> list[checks.CheckMessage]:
    """leek.E015: HEARTBEAT_INTERVAL and HEARTBEAT_TIMEOUT are seconds greater
    than zero, with at least two heartbeats in a timeout."""
    errors: list[checks.CheckMessage] = []
    for key, value in (("HEARTBEAT_INTERVAL", interval), ("HEARTBEAT_TIMEOUT", timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            errors.append(
                checks.Error(
                    f"LEEK[{key!r}] must be a number of seconds greater than zero, got {value!r}.",
                    id="leek.E015",
                )
            )
    if not errors and interval * 2 > timeout:
        errors.append(
            checks.Error(
                f"LEEK['HEARTBEAT_INTERVAL'] ({interval!r}) is more than half of "
                f"LEEK['HEARTBEAT_TIMEOUT'] ({timeout!r}).",
                hint="A broker starts tasks only while its last heartbeat is younger than "
                "the timeout less a margin of max(interval, timeout / 4): with fewer than "
                "two heartbeats in a timeout, one late heartbeat stops its tasks, and other "
                "brokers count it silent and adopt them. Keep the interval at most half "
                "the timeout (the defaults are 5 and 30).",
                id="leek.E015",
            )
        )
    return errors


def _check_reload(settings: dict[str, Any]) -> list[checks.CheckMessage]:
    """RELOAD_ON_NEW_CODE is a bool, and has a CODE_VERSION to compare."""
    value = settings["RELOAD_ON_NEW_CODE"]
    if not isinstance(value, bool):
        return [
            checks.Error(
                f"LEEK['RELOAD_ON_NEW_CODE'] must be True or False, got {value!r}.",
                id="leek.E016",
            )
        ]
    if value and not settings["CODE_VERSION"]:
        return [
            checks.Warning(
                "LEEK['RELOAD_ON_NEW_CODE'] is on, but CODE_VERSION is empty: a broker "
                "that knows no version of its own never reloads for a client's.",
                hint="Set LEEK['CODE_VERSION'] from the deployed code (a REVISION file, "
                "the commit), or LEEK_CODE_VERSION.",
                id="leek.W016",
            )
        ]
    return []


def _check_queues(queues: Any) -> list[checks.CheckMessage]:
    """LEEK["QUEUES"]: a dict of queue name to {"workers": n, "pool": kind,
    "rate_limit": "N/s", "prefetch": n}, each key optional."""
    hint = 'For example {"pdfs": {"workers": 2, "pool": "processes", "rate_limit": "30/m"}}.'
    if not isinstance(queues, dict):
        return [
            checks.Error(
                f"LEEK['QUEUES'] must be a dict of queue name to lane, "
                f"got {type(queues).__name__}.",
                hint=hint,
                id="leek.E007",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for name, lane in queues.items():
        lane = lane or {}
        problem = ""
        if not isinstance(lane, dict):
            problem = f"is a {type(lane).__name__}, not a dict"
        elif set(lane) - LANE_KEYS:
            problem = f"has unknown keys {', '.join(sorted(set(lane) - LANE_KEYS))}"
        elif "workers" in lane and (not isinstance(lane["workers"], int) or lane["workers"] < 0):
            problem = f"has workers {lane['workers']!r}, not a whole number of at least 0"
        elif "prefetch" in lane and (not isinstance(lane["prefetch"], int) or lane["prefetch"] < 0):
            problem = f"has prefetch {lane['prefetch']!r}, not a whole number of at least 0"
        elif "pool" in lane and lane["pool"] not in ("threads", "processes"):
            problem = f'has pool {lane["pool"]!r}, not "threads" or "processes"'
        elif "rate_limit" in lane:
            try:
                ratelimit.parse(lane["rate_limit"])
            except ValueError as exc:
                problem = f"has {exc}"
        if problem:
            errors.append(
                checks.Error(f"LEEK['QUEUES'][{name!r}] {problem}.", hint=hint, id="leek.E007")
            )
    return errors
