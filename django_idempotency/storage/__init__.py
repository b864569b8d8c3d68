"""Stores for idempotency records.

``DatabaseStorage`` is imported when first used, so that importing the
decorator does not need Django's app registry (the store's model does).
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
)

if TYPE_CHECKING:
    from django_idempotency.storage.database import DatabaseStorage

__all__ = [
    "BaseStorage",
    "Claim",
    "DatabaseStorage",
    "PurgeResult",
    "Record",
    "RequestKey",
    "StorageError",
]


def __getattr__(name: str) -> Any:
    if name == "DatabaseStorage":
        from django_idempotency.storage.database import DatabaseStorage

        return DatabaseStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
