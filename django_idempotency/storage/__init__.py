"""Stores for idempotency records.

``DatabaseStorage`` and ``RedisStorage`` are imported when first used, so
that importing the decorator needs neither Django's app registry (the
database store's model does) nor redis-py.
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
]


def __getattr__(name: str) -> Any:
    if name == "DatabaseStorage":
        from django_idempotency.storage.database import DatabaseStorage

        return DatabaseStorage
    if name == "RedisStorage":
        from django_idempotency.storage.redis import RedisStorage

        return RedisStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
