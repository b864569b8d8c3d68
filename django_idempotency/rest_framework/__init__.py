"""Django REST framework support: :class:`IdempotencyMixin` for API views and
viewsets, and ``@idempotent`` on DRF views (registered with the decorator on
import). Installed with the ``drf`` extra; imported by the app config when
``rest_framework`` is in ``INSTALLED_APPS``, never by the rest of the core."""

from __future__ import annotations

from django_idempotency.rest_framework import decorators as _decorators  # noqa: F401
from django_idempotency.rest_framework.exceptions import IdempotencyAPIException
from django_idempotency.rest_framework.mixins import UNSET, IdempotencyMixin

__all__ = ["UNSET", "IdempotencyAPIException", "IdempotencyMixin"]
