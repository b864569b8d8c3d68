"""The package's errors as Django Ninja answers them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse
from ninja.errors import HttpError

from django_idempotency.errors import IdempotencyError

if TYPE_CHECKING:
    from ninja import NinjaAPI


class IdempotencyHttpError(HttpError):
    """An :class:`~django_idempotency.errors.IdempotencyError` as Ninja sees
    it: an ``HttpError`` with the error's status and detail, and the error
    itself as ``error``. The API renders it with its handler for this class,
    if it has one (``@api.exception_handler(IdempotencyHttpError)``), else
    with its ``HttpError`` handler: ``{"detail": "..."}`` by default."""

    def __init__(self, error: IdempotencyError) -> None:
        super().__init__(error.status, error.detail)
        self.error = error


def error_renderer(api: NinjaAPI | None) -> Callable[[HttpRequest, IdempotencyError], Any]:
    """How ``api`` answers this package's errors when the ``error_response``
    option does not say: through its exception handlers (the retry hint,
    ``Retry-After``, is added to whatever they answer, as to every answer)."""

    def render(request: HttpRequest, error: IdempotencyError) -> HttpResponseBase:
        if api is None:
            return JsonResponse({"detail": error.detail}, status=error.status)
        response: HttpResponseBase = api.on_exception(request, IdempotencyHttpError(error))
        return response

    return render
