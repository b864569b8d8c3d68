"""One unique index on ``digest`` instead of two.

Django gives a unique ``CharField`` two indexes on PostgreSQL: the unique one
and a ``varchar_pattern_ops`` one for ``LIKE``. A single unique index with
``varchar_pattern_ops`` serves both the claim's lookups and the admin's
search by digest prefix, and each claim has one index fewer to write.

The new index is built before the old one is dropped, so that no moment
passes without a unique index (MySQL and MariaDB do not run DDL in a
transaction).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_idempotency", "0001_initial"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="idempotencykey",
            constraint=models.UniqueConstraint(
                fields=("digest",),
                name="django_idempotency_unique_digest",
                opclasses=["varchar_pattern_ops"],
            ),
        ),
        migrations.AlterField(
            model_name="idempotencykey",
            name="digest",
            field=models.CharField(max_length=64, verbose_name="digest"),
        ),
    ]
