"""Django REST framework support: :class:`IdempotencyMixin` for API views and
viewsets. Installed with the ``drf`` extra; the core never imports this package."""

from __future__ import annotations

from django_idempotency.rest_framework.exceptions import IdempotencyAPIException
from django_idempotency.rest_framework.mixins import UNSET, IdempotencyMixin

__all__ = ["UNSET", "IdempotencyAPIException", "IdempotencyMixin"]
