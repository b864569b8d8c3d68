"""The migrations: in step with the models, and shipped with the package."""

from __future__ import annotations

import importlib
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

import django_idempotency
from django_idempotency.models import IdempotencyKey


@pytest.mark.django_db
def test_makemigrations_finds_no_changes() -> None:
    out = StringIO()

    # Exits with status 1 (SystemExit) if the models and migrations differ.
    call_command(
        "makemigrations", "django_idempotency", "--check", "--dry-run", stdout=out, stderr=out
    )

    assert "No changes detected" in out.getvalue()


def test_the_migrations_package_is_shipped_with_the_code() -> None:
    migrations = importlib.import_module("django_idempotency.migrations")

    # A regular package (a namespace package, with no __init__.py, has no
    # __file__), next to the code that is imported: an installed wheel's.
    assert migrations.__file__ is not None
    package_dir = Path(django_idempotency.__file__).parent
    assert Path(migrations.__file__).parent == package_dir / "migrations"
    assert (package_dir / "migrations" / "0001_initial.py").is_file()


def test_the_initial_migration_is_importable() -> None:
    initial = importlib.import_module("django_idempotency.migrations.0001_initial")

    assert initial.Migration.initial is True
    created = [op for op in initial.Migration.operations if op.describe().startswith("Create")]
    assert [op.name for op in created] == ["IdempotencyKey"]


def test_the_loader_finds_the_migrations_on_disk() -> None:
    loader = MigrationLoader(None, ignore_no_migrations=True)

    assert "django_idempotency" in loader.migrated_apps
    assert ("django_idempotency", "0001_initial") in loader.disk_migrations


@pytest.mark.django_db
def test_the_migrated_table_has_the_models_columns_and_the_unique_digest() -> None:
    table = IdempotencyKey._meta.db_table
    with connection.cursor() as cursor:
        columns = {
            column.name for column in connection.introspection.get_table_description(cursor, table)
        }
        constraints = connection.introspection.get_constraints(cursor, table)

    assert columns == {field.column for field in IdempotencyKey._meta.concrete_fields}
    on_digest = [info for info in constraints.values() if info["columns"] == ["digest"]]
    # One index on digest, the unique one: each claim writes no second one.
    assert len(on_digest) == 1, constraints
    assert on_digest[0]["unique"], constraints
    assert any(
        info["index"] and info["columns"] == ["expires_at"] for info in constraints.values()
    ), constraints


APP = "django_idempotency"


def _digest_indexes() -> list[dict[str, object]]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(
            cursor, IdempotencyKey._meta.db_table
        )
    return [info for info in constraints.values() if info["columns"] == ["digest"]]


@pytest.mark.django_db(transaction=True)
def test_upgrading_to_one_digest_index_keeps_the_keys_and_their_uniqueness() -> None:
    """0002 swaps the digest's indexes for one unique index: the keys stored
    before it stay, and a second record of the same digest is still refused."""
    latest = MigrationLoader(connection).graph.leaf_nodes(APP)
    executor = MigrationExecutor(connection)
    executor.migrate([(APP, "0001_initial")])
    try:
        old_model = executor.loader.project_state([(APP, "0001_initial")]).apps.get_model(
            APP, "IdempotencyKey"
        )
        now = timezone.now()
        fields = {
            "scope": "s",
            "key": "k",
            "fingerprint": "f" * 64,
            "state": "completed",
            "owner": "o",
            "response_status": 201,
            "response_body": b"{}",
            "created_at": now,
            "expires_at": now,
        }
        old_model.objects.create(digest="d" * 64, **fields)

        executor = MigrationExecutor(connection)
        executor.migrate(latest)

        kept = IdempotencyKey.objects.get(digest="d" * 64)
        assert (kept.key, kept.response_status, bytes(kept.response_body)) == ("k", 201, b"{}")
        with pytest.raises(IntegrityError), transaction.atomic():
            IdempotencyKey.objects.create(digest="d" * 64, **fields)
        assert [index["unique"] for index in _digest_indexes()] == [True]
    finally:
        MigrationExecutor(connection).migrate(latest)
