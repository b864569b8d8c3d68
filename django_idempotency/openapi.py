"""What protected operations document in an OpenAPI schema, whatever
generates it: the key header as a parameter, and the answers this package
may give instead of the operation's. The drf-spectacular integration
(``rest_framework.schema``) and the Django Ninja one (``ninja``) both
build on it, so that both document the same protection the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django_idempotency import errors, transactions
from django_idempotency.conf import DEFAULT_KEY_PATTERN
from django_idempotency.keys import MAX_KEY_LENGTH
from django_idempotency.policy import Policy
from django_idempotency.responses import REPLAYED_HEADER

#: The codes of this package's errors, as the problem documents carry them.
ERROR_CODES = tuple(
    error.code
    for error in (
        errors.KeyMissing,
        errors.KeyInvalid,
        errors.KeyInUse,
        errors.KeyMismatch,
        errors.ResponseNotStored,
        errors.StorageUnavailable,
        errors.TransactionRolledBack,
    )
)

CODE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "enum": list(ERROR_CODES),
    "description": "What happened, stable and machine-readable.",
}


#: The extra member of ``idempotency_response_not_stored``, in either format.
ORIGINAL_STATUS_SCHEMA: dict[str, Any] = {
    "type": "integer",
    "description": "The status of the response that was not stored "
    "(idempotency_response_not_stored only).",
}


def problem_schema(code: dict[str, Any]) -> dict[str, Any]:
    """The schema of this package's problem documents; ``code`` is the
    schema of their ``code``: :data:`CODE_SCHEMA`, or a reference to it where
    the generator keeps it."""
    return {
        "type": "object",
        "description": (
            "An RFC 9457 problem document, answered instead of the operation's response."
        ),
        "properties": {
            "type": {"type": "string", "example": "about:blank"},
            "title": {"type": "string", "example": "Conflict"},
            "status": {"type": "integer", "example": 409},
            "detail": {"type": "string"},
            # A component of its own (drf-spectacular would name an enum in
            # place after its property, "CodeEnum", as it names the project's).
            "code": code,
            "original_status": ORIGINAL_STATUS_SCHEMA,
        },
        "required": ["type", "title", "status", "detail", "code"],
    }


def stripe_error_schema(code: dict[str, Any]) -> dict[str, Any]:
    """The schema of the package's errors under Stripe's answers
    (:func:`.errors.stripe_response`); ``code`` as for :func:`problem_schema`."""
    return {
        "type": "object",
        "description": "Stripe's error object, answered instead of the operation's response.",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": sorted(set(errors.STRIPE_TYPES.values()))},
                    "code": code,
                    "message": {"type": "string"},
                    "original_status": ORIGINAL_STATUS_SCHEMA,
                },
                "required": ["type", "code", "message"],
            }
        },
        "required": ["error"],
    }


ErrorSchema = Callable[[dict[str, Any]], dict[str, Any]]

#: The package's own formats of its answers (the renderers of
#: ``error_response``), each with the component name, the media type and
#: the schema of its bodies, which a schema generator documents; a
#: project's own format is described in words only.
FORMATS: dict[Callable[..., Any], tuple[str, str, ErrorSchema]] = {
    errors.problem_response: ("IdempotencyProblem", errors.PROBLEM_CONTENT_TYPE, problem_schema),
    errors.stripe_response: ("IdempotencyStripeError", "application/json", stripe_error_schema),
}

#: The component name of :data:`CODE_SCHEMA`, where a generator keeps components.
CODE_COMPONENT = "IdempotencyErrorCode"


RETRY_AFTER_HEADER: dict[str, Any] = {
    "schema": {"type": "integer"},
    "description": "Seconds to wait before retrying (on the transient answers: "
    "idempotency_key_in_use, idempotency_storage_unavailable, "
    "idempotency_transaction_rolled_back).",
}


def key_parameter(policy: Policy) -> dict[str, Any]:
    """The key header of ``policy`` as an OpenAPI parameter object."""
    schema: dict[str, Any] = {"type": "string", "maxLength": MAX_KEY_LENGTH}
    if policy.key_pattern.pattern == DEFAULT_KEY_PATTERN:
        schema["minLength"] = 1
    else:
        # key_pattern must match the whole key; a schema pattern may match a part.
        schema["pattern"] = f"^(?:{policy.key_pattern.pattern})$"
    return {
        "name": policy.header,
        "in": "header",
        "required": policy.required,
        "schema": schema,
        "description": (
            "A key the client makes up for this operation (a UUID, say) and sends "
            "again, unchanged, with every retry of it: the operation runs once, and "
            f"retries get its stored response, marked `{REPLAYED_HEADER}: true`. "
            f"A key is kept for {_duration(policy.ttl)} after its first use, and "
            f"belongs to one request: reused with another, it gets a {mismatch_status(policy)}."
        ),
    }


def mismatch_status(policy: Policy) -> int:
    """The status of ``idempotency_key_mismatch`` under ``policy``: Stripe's
    answers make it a 400."""
    if policy.error_response is errors.stripe_response:
        return errors.stripe_status(errors.KeyMismatch)
    return errors.KeyMismatch.status


def answers(policy: Policy) -> dict[int, dict[str, Any]]:
    """The answers this package may give instead of the operation's, by
    status, with the ``Retry-After`` header of the transient ones (which
    every answer format carries)."""
    sentences: dict[int, list[str]] = {}
    retry_after: set[int] = set()

    def answer(error: type[errors.IdempotencyError], status: int, sentence: str) -> None:
        sentences.setdefault(status, []).append(f"{sentence} ({error.code}).")
        if error.transient:
            retry_after.add(status)

    if policy.required:
        answer(errors.KeyMissing, 400, "The idempotency key is missing")
    answer(errors.KeyInvalid, 400, "The idempotency key is not valid")
    if policy.on_conflict == "wait":
        in_use = 409
        answer(
            errors.KeyInUse,
            in_use,
            "A request with this idempotency key was still being processed after "
            f"waiting {_duration(policy.wait_timeout)} for it; retry later",
        )
    else:
        in_use = policy.on_conflict
        answer(
            errors.KeyInUse,
            in_use,
            "A request with this idempotency key is still being processed; retry later",
        )
    if policy.atomic and in_use != 409:
        answer(
            errors.KeyInUse,
            409,
            "Another request took this idempotency key over before the operation "
            "committed; retry later",
        )
    if policy.duplicate_response is None:
        answer(
            errors.ResponseNotStored,
            409,
            "A request with this idempotency key was processed, but its response was "
            "not stored and cannot be replayed",
        )
    answer(
        errors.KeyMismatch,
        mismatch_status(policy),
        "This idempotency key was used with a different request",
    )
    if not policy.fail_open or policy.atomic:
        answer(
            errors.StorageUnavailable,
            503,
            "Idempotency keys cannot be checked right now; retry later",
        )
    if policy.atomic or transactions.atomic_requests():
        answer(
            errors.TransactionRolledBack,
            503,
            "The operation answered a success, but its writes were rolled back, so "
            "nothing was done; retry",
        )
    answers: dict[int, dict[str, Any]] = {}
    for status, texts in sorted(sentences.items()):
        answers[status] = {"description": " ".join(texts)}
        if status in retry_after:
            answers[status]["headers"] = {"Retry-After": dict(RETRY_AFTER_HEADER)}
    return answers


def _duration(seconds: float) -> str:
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"
