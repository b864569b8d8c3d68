"""Stores for idempotency records.

``DatabaseStorage`` and ``RedisStorage`` are imported when first used, so
that importing the decorator needs neither Django's app registry (the
database store's model does) nor redis-py; so is ``get_storage``, which
reads the settings (:mod:`django_idempotency.conf` builds on this package's
base classes, never the other way round).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_idempotency.storage.base import (
    BaseStorage,
    Claim,
    PurgeResult,
    Record,
    RequestKey,
    StorageError,
    StoreTransaction,
)

if TYPE_CHECKING:
    from django_idempotency.storage.configured import get_storage
    from django_idempotency.storage.database import DatabaseStorage
    from django_idempotency.storage.redis import RedisStorage

__all__ = [
    "BaseStorage",
    "Claim",
    "DatabaseStorage",
    "PurgeResult",
    "Record",
    "RedisStorage",
    "RequestKey",
    "StorageError",
    "StoreTransaction",
    "get_storage",
]


def __getattr__(name: str) -> Any:
    if name == "get_storage":
        from django_idempotency.storage.configured import get_storage

        return get_storage
    if name == "DatabaseStorage":
        from django_idempotency.storage.database import DatabaseStorage

        return DatabaseStorage
    if name == "RedisStorage":
        from django_idempotency.storage.redis import RedisStorage

        return RedisStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
