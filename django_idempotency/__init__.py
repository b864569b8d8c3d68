"""Idempotency keys for Django views: retries never run the same request twice."""

from __future__ import annotations

__version__ = "0.1.0"
