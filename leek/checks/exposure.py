"""The checks of what leek exposes: a broker's address and its secret, TLS,
the metrics page, and what the admin and periodic tasks may run."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .. import conf


@checks.register()
def check_admin_trust(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """LEEK["ADMIN_COMMANDS"] and LEEK["PERIODIC_ALLOWED"]: leek.E010 when one
    is not a list of names, leek.W010 for a name that is refused or unknown."""
    from django.core.management import get_commands

    from ..allowlist import refused_command, unsafe_path

    if conf.unreadable():  # check_settings says why
        return []
    settings = conf.get_settings()
    found: list[checks.CheckMessage] = []
    for key, example in (
        ("ADMIN_COMMANDS", '["check", "clearsessions"]'),
        ("PERIODIC_ALLOWED", '["myapp.reports.send_daily"]'),
    ):
        value = settings[key]
        if isinstance(value, str) or not isinstance(value, list | tuple):
            found.append(
                checks.Error(
                    f"LEEK[{key!r}] must be a list of names, got {type(value).__name__}.",
                    hint=f"For example {example}.",
                    id="leek.E010",
                )
            )
            continue
        for item in value:
            if not isinstance(item, str) or not item.strip():
                found.append(
                    checks.Error(
                        f"LEEK[{key!r}] has {item!r}, not a name.",
                        hint=f"For example {example}.",
                        id="leek.E010",
                    )
                )
            elif key == "PERIODIC_ALLOWED" and "." not in item:
                found.append(
                    checks.Error(
                        f"LEEK['PERIODIC_ALLOWED'] has {item!r}, not the dotted path of a "
                        "callable.",
                        hint=f"For example {example}.",
                        id="leek.E010",
                    )
                )
    commands = settings["ADMIN_COMMANDS"]
    for name in commands if isinstance(commands, list | tuple) else ():
        if not isinstance(name, str):
            continue
        if refused_command(name):
            found.append(
                checks.Warning(
                    f"LEEK['ADMIN_COMMANDS'] lists {name!r}, which the admin never runs: it "
                    "executes its input, or discloses or changes what staff must not reach.",
                    hint="Remove it; run it from a shell on the server.",
                    id="leek.W010",
                )
            )
        elif name not in get_commands():
            found.append(
                checks.Warning(
                    f"LEEK['ADMIN_COMMANDS'] lists {name!r}, which is not a management "
                    "command of this project; the admin does not offer it.",
                    id="leek.W010",
                )
            )
    paths = settings["PERIODIC_ALLOWED"]
    for path in paths if isinstance(paths, list | tuple) else ():
        if isinstance(path, str) and unsafe_path(path):
            found.append(
                checks.Warning(
                    f"LEEK['PERIODIC_ALLOWED'] lists {path!r}, which runs its input as code "
                    "or commands; periodic tasks never run it.",
                    hint="Wrap what it should do in a @leek.task function of your own.",
                    id="leek.W010",
                )
            )
    return found


def check_exposure(settings: dict[str, Any]) -> list[checks.CheckMessage]:
    """leek.E009: a HOST beyond loopback without a strong explicit secret;
    leek.E011: a TLS setting that is malformed or names files that do not load."""
    from ..protocol import tls

    errors: list[checks.CheckMessage] = []
    host = str(settings["HOST"])
    problem = None if conf.is_loopback(host) else conf.public_secret_problem()
    if problem:
        errors.append(
            checks.Error(
                f"LEEK['HOST'] is {host!r}, beyond loopback, and {problem}: anyone who "
                "can reach the port and knows that key runs code on the broker.",
                hint=conf.SECRET_HINT,
                id="leek.E009",
            )
        )
    for problem in tls.problems(settings["TLS"]):
        errors.append(
            checks.Error(
                f"LEEK['TLS'] {problem}.",
                hint='For example {"cert": "/etc/leek/broker.pem", "key": '
                '"/etc/leek/broker.key", "ca": "/etc/leek/ca.pem"}.',
                id="leek.E011",
            )
        )
    return errors


@checks.register()
def check_metrics(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """LEEK["METRICS"]: leek.E013 when it is not "host:port" or prometheus_client
    is missing; leek.W013 when the page would be served beyond loopback."""
    if conf.unreadable():  # check_settings says why
        return []
    value = conf.get_settings()["METRICS"]
    if not value:
        return []
    try:
        host, _ = conf.metrics_address(value)
    except ValueError as exc:
        return [checks.Error(f"{exc}.", hint='For example "127.0.0.1:9808".', id="leek.E013")]
    found: list[checks.CheckMessage] = []
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        found.append(
            checks.Error(
                f"LEEK['METRICS'] is {value!r}, and the prometheus_client package is not "
                "installed.",
                hint="pip install 'leek[metrics]', or leave LEEK['METRICS'] empty.",
                id="leek.E013",
            )
        )
    if not conf.is_loopback(host):
        found.append(
            checks.Warning(
                f"LEEK['METRICS'] is {value!r}, beyond loopback: the metrics page has no "
                "authentication, and shows queue names, broker names and load to anyone "
                "who reaches it.",
                hint="Serve it on 127.0.0.1 and let Prometheus scrape it there, or restrict "
                "the port with a firewall to the Prometheus server.",
                id="leek.W013",
            )
        )
    return found
