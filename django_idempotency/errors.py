"""The errors this package answers with, the retry hint each carries, and
the forms they take: problem+json (the default) and Stripe's error body."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, ClassVar

from django.http import HttpRequest, HttpResponse, HttpResponseBase

PROBLEM_CONTENT_TYPE = "application/problem+json"

#: ``Retry-After`` of the transient answers, in seconds.
RETRY_AFTER = "1"


class IdempotencyError(Exception):
    """An answer of this package instead of the view's.

    ``code`` is stable and machine-readable; ``status`` is the HTTP status;
    ``detail`` is a sentence for people; ``headers`` are added to the response;
    ``extra`` holds further members of the problem document.

    ``transient`` says whether the same request, sent again unchanged, may
    get another answer (the first request ends, the store comes back): a
    transient answer carries ``Retry-After``, a permanent one never does,
    whatever renders it (:func:`with_retry_hint`).
    """

    code: ClassVar[str]
    status: int
    default_detail: ClassVar[str]
    transient: ClassVar[bool] = False

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
        self.headers = {"Retry-After": RETRY_AFTER} if self.transient else {}
        self.headers.update(headers or {})
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
    transient = True
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
    transient = True
    default_detail = "Idempotency keys cannot be checked right now. Retry later."


class TransactionRolledBack(IdempotencyError):
    code = "idempotency_transaction_rolled_back"
    status = 503
    transient = True
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


# -- Stripe's answers ---------------------------------------------------------------

#: Stripe's ``type`` of each error (https://docs.stripe.com/api/errors): its
#: SDKs raise ``IdempotencyError`` for a 400 of type ``idempotency_error``.
STRIPE_TYPES = {
    KeyMissing.code: "invalid_request_error",
    KeyInvalid.code: "invalid_request_error",
    KeyInUse.code: "invalid_request_error",
    KeyMismatch.code: "idempotency_error",
    ResponseNotStored.code: "api_error",
    StorageUnavailable.code: "api_error",
    TransactionRolledBack.code: "api_error",
}

#: Where Stripe's status differs from this package's: a key reused with other
#: parameters is a 400 (https://docs.stripe.com/error-low-level#idempotency).
STRIPE_STATUSES = {KeyMismatch.code: 400}

#: The header Stripe's SDKs obey before any rule of their own.
SHOULD_RETRY_HEADER = "Stripe-Should-Retry"


def stripe_status(error: IdempotencyError | type[IdempotencyError]) -> int:
    """The status of ``error`` in Stripe's answers."""
    return STRIPE_STATUSES.get(error.code, error.status)


def stripe_response(request: HttpRequest, error: IdempotencyError) -> HttpResponse:
    """An ``error_response`` for APIs whose clients are Stripe's SDKs (or
    built like them): Stripe's error body, ``{"error": {"type", "code",
    "message"}}``, Stripe's status for a reused key, and
    ``Stripe-Should-Retry: true`` on transient answers, ``false`` on
    permanent ones."""
    body = {
        "error": {
            "type": STRIPE_TYPES.get(error.code, "api_error"),
            "code": error.code,
            "message": error.detail,
            **error.extra,
        }
    }
    response = HttpResponse(
        json.dumps(body), status=stripe_status(error), content_type="application/json"
    )
    for name, value in error.headers.items():
        response[name] = value
    response[SHOULD_RETRY_HEADER] = "true" if error.transient else "false"
    return response


def with_retry_hint(response: HttpResponseBase, error: IdempotencyError) -> HttpResponseBase:
    """``response``, the rendering of ``error`` by any ``error_response``,
    with the retry hint of ``error``: ``Retry-After`` on a transient answer
    (the renderer's own value is kept), none on a permanent one."""
    if not error.transient:
        del response["Retry-After"]
    elif "Retry-After" not in response:
        response["Retry-After"] = error.headers.get("Retry-After", RETRY_AFTER)
    return response
