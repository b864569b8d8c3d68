"""Stores for idempotency records."""

from __future__ import annotations

from django_idempotency.storage.base import (
    BaseStorage,
    Claim,
    PurgeResult,
    Record,
    RequestKey,
    StorageError,
)
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
