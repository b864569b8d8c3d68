"""``manage.py purge_idempotency_keys``: delete expired keys in batches."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_idempotency import conf
from django_idempotency.storage.base import StorageError
from django_idempotency.storage.configured import get_storage


class Command(BaseCommand):
    help = (
        "Delete expired idempotency keys in batches. Keys whose claim is still "
        "live are never deleted. Run it from cron, for example hourly."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="How many keys one DELETE removes (default: 1000).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count the keys that would be deleted, and delete none.",
        )
        parser.add_argument(
            "--storage",
            help="Dotted path of the store to purge (default: IDEMPOTENCY['STORAGE']).",
        )

    def get_check_kwargs(self, options: dict[str, Any]) -> dict[str | None, Any]:
        # The system checks that run before handle() are given no database, as
        # before Django 6.1, which runs them against every alias unless told
        # otherwise: a database that is down, the store's or another, would
        # end the command in the checks with the driver's traceback. handle()
        # reports a store it cannot reach as a CommandError that cron can log.
        return {**super().get_check_kwargs(options), "databases": []}

    def handle(self, *args: Any, batch_size: int, dry_run: bool, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be a positive number.")
        try:
            storage = get_storage(options.get("storage"))
        except (ImportError, conf.OptionError, TypeError) as exc:
            raise CommandError(f"Cannot use the idempotency storage: {exc}") from exc
        try:
            result = storage.purge(batch_size=batch_size, dry_run=dry_run)
        except StorageError as exc:
            raise CommandError(f"The idempotency storage failed: {exc}") from exc
        if result is None:
            self.stdout.write(f"Nothing to purge: {type(storage).__name__} expires keys by itself.")
        elif dry_run:
            self.stdout.write(
                f"{_count(result.deleted, 'expired key')} would be deleted (dry run)."
            )
        else:
            self.stdout.write(
                f"Deleted {_count(result.deleted, 'expired key')} "
                f"in {_count(result.batches, 'batch', 'batches')}."
            )


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"
