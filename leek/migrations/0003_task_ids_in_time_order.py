"""Task ids made by the model default are UUID version 7, as the client makes them.

The default lives in Python only, so the database is left as it is (on SQLite,
AlterField would copy the whole task table for it)."""

from django.db import migrations, models

import leek.protocol


class Migration(migrations.Migration):
    dependencies = [
        ("leek", "0002_admin_queue_age"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="task",
                    name="id",
                    field=models.UUIDField(
                        default=leek.protocol.new_task_id,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
            ],
        ),
    ]
