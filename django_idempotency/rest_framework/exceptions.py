"""This package's errors inside DRF: problem+json, or the project's own
exception handler when it configured one."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from django.http import HttpRequest, HttpResponseBase
from rest_framework.exceptions import APIException
from rest_framework.views import exception_handler as drf_exception_handler

from django_idempotency.errors import IdempotencyError, problem_response

if TYPE_CHECKING:
    from rest_framework.views import APIView


class IdempotencyAPIException(APIException):
    """An :class:`~django_idempotency.errors.IdempotencyError` as DRF sees it,
    handed to a custom ``EXCEPTION_HANDLER``.

    ``status_code``, ``detail`` and the code (``get_codes()``) are the
    error's; ``error`` is the error itself. ``wait`` is the ``Retry-After``
    of the in-use and store-unavailable answers, which DRF's own handler
    turns back into that header.
    """

    def __init__(self, error: IdempotencyError) -> None:
        super().__init__(detail=error.detail, code=error.code)
        self.error = error
        self.status_code = error.status
        retry_after = error.headers.get("Retry-After")
        self.wait = int(retry_after) if retry_after and retry_after.isdigit() else None


def error_renderer(view: APIView) -> Callable[[HttpRequest, IdempotencyError], HttpResponseBase]:
    """How ``view`` renders this package's errors when the ``error_response``
    option does not say: through the view's exception handler if the project
    configured one (``EXCEPTION_HANDLER``, or ``get_exception_handler()``
    overridden), else as problem+json, the same bytes as the decorator's."""
    if view.get_exception_handler() is drf_exception_handler:
        return problem_response
    return partial(_through_exception_handler, view)


def _through_exception_handler(
    view: APIView, request: HttpRequest, error: IdempotencyError
) -> HttpResponseBase:
    handler = view.get_exception_handler()
    context = view.get_exception_handler_context()
    response: HttpResponseBase | None = handler(IdempotencyAPIException(error), context)
    if response is None:  # the handler declined this exception
        return problem_response(request, error)
    response.exception = True  # type: ignore[attr-defined]  # as DRF marks handled errors
    return response
