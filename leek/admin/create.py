"""The "Create a task" page.

Routed by the Task admin (`admin:leek_task_create`) behind
`admin_site.admin_view`, so it needs a staff login, and the permission
``leek.run_task`` (not ``add_task``: creating a task runs code on a broker).
It offers the registered `@leek.task` functions (the `tasks` module of every
installed app is imported) and the management commands of
``LEEK["ADMIN_COMMANDS"]``; leek.allowlist says which. A command runs on a
worker through `leek.calls.run_command`. Every task pushed from here is an
Event naming the user.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from ..allowlist import admin_commands, discover_tasks, registered_tasks
from ..calls import run_command
from ..client import TaskHandle, enqueue
from ..events import log_event
from ..exceptions import LeekError
from ..models import Task
from .actions import broker_calls

#: The permission the page needs.
PERMISSION = "leek.run_task"


def _choices() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every registered task, once each installed app's `tasks` module is
    imported, then the management commands the admin may run."""
    discover_tasks()
    tasks = [(f"task:{name}", name) for name in sorted(registered_tasks())]
    choices = [("Tasks (@leek.task)", tasks)]
    commands = [(f"command:{name}", f"manage.py {name}") for name in admin_commands()]
    if commands:
        choices.append(("Management commands (LEEK['ADMIN_COMMANDS'])", commands))
    return choices


class CreateTaskForm(forms.Form):
    """A task or command, its arguments and keyword arguments as JSON, and the
    options that override the task's own."""

    target = forms.ChoiceField(label="Task or command")
    args = forms.CharField(
        label="Arguments",
        initial="[]",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text='A JSON list, e.g. [1, "two"]. For a command: its positional arguments.',
    )
    kwargs = forms.CharField(
        label="Keyword arguments",
        initial="{}",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=(
            'A JSON object, e.g. {"send": true}. For a command: its options by name, '
            'e.g. {"verbosity": 2}.'
        ),
    )
    queue = forms.CharField(
        required=False, max_length=64, help_text="Blank: the task's own queue, or default."
    )
    priority = forms.IntegerField(
        required=False, help_text="Higher runs first. Blank: the task's own, or 0."
    )
    delay = forms.FloatField(required=False, min_value=0, help_text="Seconds before it runs.")
    max_retries = forms.IntegerField(
        required=False, min_value=0, help_text="Blank: the task's own (commands: 0, run once)."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["target"].choices = _choices()  # type: ignore[attr-defined]

    def clean_args(self) -> list[Any]:
        value = _json(self.cleaned_data["args"] or "[]", "arguments")
        if not isinstance(value, list):
            raise forms.ValidationError(
                f"must be a JSON list like [1, 2], got {type(value).__name__}"
            )
        return value

    def clean_kwargs(self) -> dict[str, Any]:
        value = _json(self.cleaned_data["kwargs"] or "{}", "keyword arguments")
        if not isinstance(value, dict):
            example = '{"name": "value"}'
            raise forms.ValidationError(
                f"must be a JSON object like {example}, got {type(value).__name__}"
            )
        return value

    def push(self) -> TaskHandle:
        """Push the chosen task through the broker (or the database fallback)."""
        data = self.cleaned_data
        kind, _, name = data["target"].partition(":")
        args, kwargs = tuple(data["args"]), data["kwargs"]
        if kind == "task":
            return registered_tasks()[name].enqueue(
                args,
                kwargs,
                queue=data["queue"] or None,
                priority=data["priority"],
                delay=data["delay"],
                max_retries=data["max_retries"],
            )
        if name not in admin_commands():  # the choices were made from the same list
            raise PermissionDenied(f"the command {name!r} may not run from the admin")
        retries = data["max_retries"]
        return enqueue(
            run_command,
            (name, *args),
            kwargs,
            queue=data["queue"] or "default",
            priority=data["priority"] or 0,
            delay=data["delay"],
            max_retries=0 if retries is None else retries,
        )


def _json(text: str, what: str) -> Any:
    """`text` parsed as JSON; a ValidationError naming `what` when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(f"{what} are not valid JSON: {exc}") from exc


def create_task(request: HttpRequest, site: admin.AdminSite) -> HttpResponse:
    """Pick a task or a command, give its arguments as JSON, push it."""
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    form = CreateTaskForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            with broker_calls():
                handle = form.push()
        except (LeekError, TypeError, ValueError) as exc:
            form.add_error(None, f"The task was not pushed: {type(exc).__name__}: {exc}")
        else:
            kind, _, target = form.cleaned_data["target"].partition(":")
            log_event(
                "admin.create_task",
                f"pushed {target} from the admin",
                actor=request.user.get_username(),
                task=str(handle.id),
                target=f"{kind}:{target}",
                args=form.cleaned_data["args"],
                kwargs=form.cleaned_data["kwargs"],
            )
            messages.success(request, f"Pushed {target} as task {handle.id}.")
            return HttpResponseRedirect(reverse("admin:leek_task_change", args=[handle.id]))
    context = {
        **site.each_context(request),
        "title": "Create a task",
        "form": form,
        "opts": Task._meta,
    }
    return TemplateResponse(request, "admin/leek/create_task.html", context)
