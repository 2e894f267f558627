from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("leek", "0008_signed_payloads"),
    ]

    operations = [
        migrations.AddField(
            model_name='task',
            name='requeues',
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
    ]
