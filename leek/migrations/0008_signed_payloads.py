"""Sign the task payloads and result blobs stored before leek signed them.

Run it with the production LEEK_SECRET (or SECRET_KEY, when LEEK_SECRET is
not set) in the environment: the rows are signed under the secret this
process sees, and a broker with another secret refuses them. Stop the
brokers while it runs, as an older broker cannot read a signed row and
writes unsigned ones.

Blobs that are signed already are left alone, so running it again signs only
what is left (it commits page by page). Reversing it strips the signatures,
for an older leek to read: migrating back and forward again re-signs every
row under the secret set then.
"""

from typing import Any

from django.db import migrations, transaction

#: Rows read and written at a time.
PAGE = 500


def _rewrite(model: Any, field: str, change: Any) -> None:
    """Apply `change` to `field` of every row of `model`, a page at a time."""
    last = None
    while True:
        rows = model.objects.order_by("pk")
        if last is not None:
            rows = rows.filter(pk__gt=last)
        page = list(rows.values_list("pk", field)[:PAGE])
        if not page:
            return
        changed = []
        for pk, blob in page:
            if blob is None:
                continue
            old = bytes(blob)
            new = change(old)
            if new != old:
                changed.append(model(pk=pk, **{field: new}))
        if changed:
            with transaction.atomic():
                model.objects.bulk_update(changed, [field])
        last = page[-1][0]


def sign_rows(apps: Any, schema_editor: Any) -> None:
    """Sign every unsigned payload and result under the current secret."""
    from leek.protocol.payload import TASK_MAGIC, VALUE_MAGIC, is_signed, signed

    def task(blob: bytes) -> bytes:
        return blob if is_signed(blob) else signed(TASK_MAGIC, blob)

    def value(blob: bytes) -> bytes:
        return blob if is_signed(blob) else signed(VALUE_MAGIC, blob)

    _rewrite(apps.get_model("leek", "Task"), "payload", task)
    _rewrite(apps.get_model("leek", "SuccessTask"), "result", value)


def strip_signatures(apps: Any, schema_editor: Any) -> None:
    """Store every payload and result as the bare pickle an older leek reads."""
    from leek.protocol.payload import unsigned

    _rewrite(apps.get_model("leek", "Task"), "payload", unsigned)
    _rewrite(apps.get_model("leek", "SuccessTask"), "result", unsigned)


class Migration(migrations.Migration):
    atomic = False  # each page commits: a table of millions is no one transaction

    dependencies = [
        ("leek", "0007_run_task_permission"),
    ]

    operations = [
        migrations.RunPython(sign_rows, strip_signatures, elidable=True),
    ]
