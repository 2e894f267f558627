"""The periodic task form of the admin: a task the site allows, on a valid schedule.

A periodic task runs the callable at a dotted path on a broker, so the form
takes only the paths leek.allowlist allows (a registered ``@leek.task``, a path
of ``LEEK["PERIODIC_ALLOWED"]``, a listed command through
``leek.calls.run_command``), and checks the schedule as the broker reads it
(leek.schedules). The broker asks the allowlist again before it runs a row, so
a row written some other way is refused there too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms

from ..allowlist import (
    RUN_COMMAND,
    admin_commands,
    allowed_paths,
    discover_tasks,
    periodic_refusal,
    registered_tasks,
)
from ..models import PeriodicTask
from ..schedules import Schedule

if TYPE_CHECKING:
    ModelForm = forms.ModelForm[PeriodicTask]
else:
    ModelForm = forms.ModelForm

#: Most paths the task field's help lists.
LISTED = 20


def _allowed_help() -> str:
    """The paths the task field takes, for its help text."""
    discover_tasks()
    paths = sorted(registered_tasks()) + allowed_paths()
    if admin_commands():
        paths.append(f"{RUN_COMMAND} (first argument: {', '.join(admin_commands())})")
    if not paths:
        return (
            "The dotted path of a registered @leek.task function or of a path listed "
            "in LEEK['PERIODIC_ALLOWED']; none exists yet."
        )
    more = f", and {len(paths) - LISTED} more" if len(paths) > LISTED else ""
    return f"One of: {', '.join(paths[:LISTED])}{more}."


class PeriodicTaskForm(ModelForm):
    """A PeriodicTask whose task is allowed and whose schedule parses."""

    class Meta:
        model = PeriodicTask
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "task" in self.fields:
            self.fields["task"].help_text = _allowed_help()

    def clean_args(self) -> Any:
        value = self.cleaned_data.get("args")
        if value is not None and not isinstance(value, list):
            raise forms.ValidationError(
                f"must be a JSON list like [1, 2], got {type(value).__name__}"
            )
        return value or []

    def clean_kwargs(self) -> Any:
        value = self.cleaned_data.get("kwargs")
        if value is not None and not isinstance(value, dict):
            example = '{"name": "value"}'
            raise forms.ValidationError(
                f"must be a JSON object like {example}, got {type(value).__name__}"
            )
        return value or {}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        self._check_schedule(data)
        path = data.get("task")
        if path and "args" not in self.errors:
            discover_tasks()
            refusal = periodic_refusal(str(data.get("name") or ""), path, data.get("args") or [])
            if refusal:
                self.add_error("task", f"Not allowed: {refusal}.")
        return data

    def _check_schedule(self, data: dict[str, Any]) -> None:
        if "cron" in self.errors or "every" in self.errors:
            return
        cron, every = (data.get("cron") or "").strip(), data.get("every")
        if cron and every is not None:
            self.add_error(None, "Give a cron expression or an interval in seconds, not both.")
        elif not cron and every is None:
            self.add_error(
                None, "Give a cron expression (or hourly, daily, ...) or an interval in seconds."
            )
        else:
            try:
                Schedule.parse(cron, every)
            except ValueError as exc:
                self.add_error("cron" if cron else "every", f"{exc}.")
