"""The errors this package answers with, and their default problem+json form."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, ClassVar

from django.http import HttpRequest, HttpResponse

PROBLEM_CONTENT_TYPE = "application/problem+json"


class IdempotencyError(Exception):
    """An answer of this package instead of the view's.

    ``code`` is stable and machine-readable; ``status`` is the HTTP status;
    ``detail`` is a sentence for people; ``headers`` are added to the response;
    ``extra`` holds further members of the problem document.
    """

    code: ClassVar[str]
    status: int
    default_detail: ClassVar[str]

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if status is not None:
            self.status = status
        self.detail = detail or self.default_detail
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)

    def as_problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        return {
            "type": "about:blank",
            "title": _title(self.status),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            **self.extra,
        }


class KeyMissing(IdempotencyError):
    code = "idempotency_key_missing"
    status = 400
    default_detail = "This endpoint requires an idempotency key."


class KeyInvalid(IdempotencyError):
    code = "idempotency_key_invalid"
    status = 400
    default_detail = "The idempotency key is not valid."


class KeyInUse(IdempotencyError):
    code = "idempotency_key_in_use"
    status = 409
    default_detail = "A request with this idempotency key is still being processed. Retry later."


class KeyMismatch(IdempotencyError):
    code = "idempotency_key_mismatch"
    status = 422
    default_detail = "This idempotency key was already used with a different request."


class ResponseNotStored(IdempotencyError):
    code = "idempotency_response_not_stored"
    status = 409
    default_detail = (
        "A request with this idempotency key was already processed, but its response "
        "was too large or streamed without a known length, so it cannot be replayed."
    )


class StorageUnavailable(IdempotencyError):
    code = "idempotency_storage_unavailable"
    status = 503
    default_detail = "Idempotency keys cannot be checked right now. Retry later."


class TransactionRolledBack(IdempotencyError):
    code = "idempotency_transaction_rolled_back"
    status = 503
    default_detail = (
        "The request's changes were rolled back, so nothing was done. Retry the request."
    )


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status Python does not name, such as 499
        return "Client Error" if status < 500 else "Server Error"


def problem_response(request: HttpRequest, error: IdempotencyError) -> HttpResponse:
    """The default ``error_response``: an ``application/problem+json`` document."""
    response = HttpResponse(
        json.dumps(error.as_problem()),
        status=error.status,
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in error.headers.items():
        response[name] = value
    return response
