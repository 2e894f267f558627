from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('leek', '0006_outcome_broker'),
    ]

    operations = [
        migrations.AddField(
            model_name='task',
            name='requeues',
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
    ]
