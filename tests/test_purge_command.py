"""``manage.py purge_idempotency_keys``."""

from __future__ import annotations

import gc
import tracemalloc
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command, load_command_class
from django.core.management.base import SystemCheckError
from django.db import connections
from factories import IdempotencyKeyFactory, create_expired_keys

from django_idempotency.models import IdempotencyKey
from django_idempotency.storage import BaseStorage

COMMAND = "purge_idempotency_keys"

#: What the driver says, per vendor, when the ``down_database`` is used.
DOWN_DATABASE_REASONS = {
    "sqlite": "unable to open database file",
    "postgresql": "Connection refused",
    "mysql": "Connection refused",
}


class SelfExpiringStorage(BaseStorage):
    """A store that expires keys by itself, as Redis does: nothing to purge."""


def _purge(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command(COMMAND, *args, stdout=out, **options)
    return out.getvalue()


@pytest.mark.django_db
def test_deletes_expired_keys_and_says_how_many() -> None:
    IdempotencyKeyFactory.create_batch(3, expired=True)
    IdempotencyKeyFactory(abandoned=True, expired=True)
    live = [
        IdempotencyKeyFactory(),
        IdempotencyKeyFactory(in_progress=True),
        IdempotencyKeyFactory(in_progress=True, expired=True),
    ]

    output = _purge()

    assert output == "Deleted 4 expired keys in 1 batch.\n"
    assert set(IdempotencyKey.objects.values_list("pk", flat=True)) == {row.pk for row in live}


@pytest.mark.django_db
def test_batch_size_option() -> None:
    create_expired_keys(25)

    output = _purge("--batch-size", "10")

    assert output == "Deleted 25 expired keys in 3 batches.\n"
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
def test_batch_size_keyword() -> None:
    create_expired_keys(7)

    assert _purge(batch_size=2) == "Deleted 7 expired keys in 4 batches.\n"


@pytest.mark.django_db
def test_dry_run_counts_and_deletes_nothing() -> None:
    IdempotencyKeyFactory.create_batch(5, expired=True)
    IdempotencyKeyFactory(in_progress=True, expired=True)
    IdempotencyKeyFactory()

    output = _purge("--dry-run", "--batch-size", "2")

    assert output == "5 expired keys would be deleted (dry run).\n"
    assert IdempotencyKey.objects.count() == 7


@pytest.mark.django_db
def test_one_key_is_said_in_the_singular() -> None:
    IdempotencyKeyFactory(expired=True)

    assert _purge("--dry-run") == "1 expired key would be deleted (dry run).\n"
    assert _purge() == "Deleted 1 expired key in 1 batch.\n"


@pytest.mark.django_db
def test_nothing_to_delete() -> None:
    IdempotencyKeyFactory()

    assert _purge() == "Deleted 0 expired keys in 0 batches.\n"
    assert IdempotencyKey.objects.count() == 1


@pytest.mark.django_db
def test_uses_the_configured_storage_options(settings: Any) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABASE": "default"}}
    create_expired_keys(2)

    assert _purge() == "Deleted 2 expired keys in 1 batch.\n"


@pytest.mark.parametrize("size", ["0", "-5"])
def test_batch_size_must_be_positive(size: str) -> None:
    with pytest.raises(CommandError, match="--batch-size must be a positive number"):
        _purge("--batch-size", size)


def test_batch_size_must_be_a_number() -> None:
    with pytest.raises(CommandError, match="batch-size"):
        _purge("--batch-size", "many")


@pytest.mark.parametrize(
    "path",
    [
        "no_such_module.Storage",
        "django_idempotency.storage.NoSuchStorage",
        "django.http.HttpResponse",  # importable, but not a store
    ],
)
def test_unknown_storage_path(path: str) -> None:
    with pytest.raises(CommandError, match="Cannot use the idempotency storage"):
        _purge("--storage", path)


def test_storage_options_the_store_rejects(settings: Any) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABSE": "default"}}

    with pytest.raises(CommandError, match="Cannot use the idempotency storage"):
        _purge()


def test_a_store_that_expires_keys_by_itself() -> None:
    output = _purge("--storage", f"{__name__}.SelfExpiringStorage")

    assert output == "Nothing to purge: SelfExpiringStorage expires keys by itself.\n"


@pytest.mark.parametrize("dry_run", [False, True], ids=["purge", "dry-run"])
@pytest.mark.parametrize(
    "skip_checks",
    [
        # As from the command line (and cron): the system checks run first.
        pytest.param(False, id="after-the-system-checks"),
        pytest.param(True, id="without-the-system-checks"),  # call_command()'s default
    ],
)
def test_store_down_is_a_command_error(
    settings: Any, down_database: str, dry_run: bool, skip_checks: bool
) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABASE": down_database}}

    with pytest.raises(CommandError) as error:
        _purge(dry_run=dry_run, skip_checks=skip_checks)

    assert not isinstance(error.value, SystemCheckError)
    message = str(error.value)
    assert message.startswith("The idempotency storage failed: "), message
    assert DOWN_DATABASE_REASONS[connections[down_database].vendor] in message


def test_store_down_from_the_command_line_prints_an_error_not_a_traceback(
    settings: Any, down_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABASE": down_database}}
    command = load_command_class("django_idempotency", COMMAND)

    with pytest.raises(SystemExit) as exit_info:
        command.run_from_argv(["manage.py", COMMAND, "--batch-size", "100"])

    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("CommandError: The idempotency storage failed")
    assert "Traceback" not in err


@pytest.mark.django_db
def test_a_database_down_does_not_stop_the_purge_of_a_store_that_is_up(
    down_database: str,
) -> None:
    """The system checks the command runs first reach no database, so a
    database other than the store's may be down (Django 6.1 checks every
    database unless told which)."""
    create_expired_keys(3)

    assert _purge(skip_checks=False) == "Deleted 3 expired keys in 1 batch.\n"
    assert not IdempotencyKey.objects.exists()


def test_the_system_checks_run_before_the_purge(settings: Any) -> None:
    settings.IDEMPOTENCY = {"TTL": "1 day"}

    with pytest.raises(SystemCheckError, match=r"django_idempotency\.E003"):
        _purge(skip_checks=False)


def _peak_memory_of_purge(batch_size: int) -> tuple[int, str]:
    """Peak bytes allocated by Python while the command runs, and its output."""
    gc.collect()
    out = StringIO()
    tracemalloc.start()
    try:
        call_command(COMMAND, batch_size=batch_size, stdout=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, out.getvalue()


@pytest.mark.django_db
@pytest.mark.timeout(600)  # tracemalloc slows every allocation: a loaded machine needs time
def test_memory_stays_flat_whatever_the_number_of_rows() -> None:
    # Warm up: the first run imports and compiles what every run needs.
    _peak_memory_of_purge(125)

    create_expired_keys(500)
    small_peak, small_output = _peak_memory_of_purge(125)
    create_expired_keys(5_000)
    large_peak, large_output = _peak_memory_of_purge(125)

    assert small_output == "Deleted 500 expired keys in 4 batches.\n"
    assert large_output == "Deleted 5000 expired keys in 40 batches.\n"
    assert not IdempotencyKey.objects.exists()
    # Ten times the rows, in batches of the same size: the peak must not grow
    # with the rows (it would be about ten times larger if they were all held).
    assert large_peak < 2 * small_peak, (small_peak, large_peak)
