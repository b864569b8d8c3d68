"""Django Ninja support: ``@idempotent`` on the operations of a ``NinjaAPI``
or a ``Router``, and :class:`~django_idempotency.middleware.IdempotencyMiddleware`
on the URLs of an API. Installed with the ``ninja`` extra; imported by the
app config when django-ninja is installed, never by the rest of the core.

The key is claimed once Ninja has authenticated the request (the default
scope reads ``request.auth`` or ``request.user``), checked its throttles
and validated its parameters, and completed with the response Ninja
serialized. Errors are answered through the API's exception handlers, as
an :class:`~django_idempotency.ninja.errors.IdempotencyHttpError`.
"""

from __future__ import annotations

from django_idempotency.ninja import adapter as _adapter  # noqa: F401  (registers it)
from django_idempotency.ninja.errors import IdempotencyHttpError

__all__ = ["IdempotencyHttpError"]
