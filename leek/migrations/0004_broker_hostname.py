"""The machine each broker runs on, so a broker can tell a dead namesake from a live one."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('leek', '0003_task_ids_in_time_order'),
    ]

    operations = [
        migrations.AddField(
            model_name='brokernode',
            name='hostname',
            field=models.CharField(blank=True, default='', max_length=255),
        ),
    ]
