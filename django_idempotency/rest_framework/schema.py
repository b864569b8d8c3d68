"""OpenAPI for drf-spectacular: the idempotency header and answers of protected operations.

:class:`IdempotencyAutoSchema` is added to drf-spectacular's ``AutoSchema``
(or to the project's own subclass of it) for views with
:class:`~django_idempotency.rest_framework.IdempotencyMixin`: the mixin's
``schema`` descriptor does it when the view's schema class is drf-spectacular's,
which is the only time this module is imported. It adds to each protected
operation, without touching what the view documents itself:

- the key header as a parameter, required or not, unless the key comes from
  the body (``key_func``);
- the answers of this package: ``400`` (key missing or invalid), the in-use
  status (``409``, or ``on_conflict``), ``422`` (key reused with another
  request) and ``503`` (store unavailable, unless ``fail_open``), as
  ``application/problem+json`` when that is what the view answers.

Why not an ``OpenApiViewExtension``: drf-spectacular applies one view
extension per view, so ours would displace a project's own, and an action's
``@extend_schema`` is built on the view's original schema class, past any
view replacement. A schema class composes with both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework.views import exception_handler as drf_exception_handler

from django_idempotency.conf import DEFAULT_KEY_PATTERN, Policy
from django_idempotency.keys import MAX_KEY_LENGTH

if TYPE_CHECKING:
    from django_idempotency.rest_framework.mixins import IdempotencyMixin

PROBLEM_COMPONENT = "IdempotencyProblem"

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem document.",
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {
            "type": "string",
            "description": "Stable and machine-readable.",
            "example": "idempotency_key_in_use",
        },
    },
    "required": ["type", "title", "status", "detail", "code"],
}


class IdempotencyAutoSchema(AutoSchema):
    """Adds the idempotency header and answers to protected operations."""

    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any
    ) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(
            path, path_regex, path_prefix, method, registry
        )
        policy = self._idempotency_policy(method)
        if operation is None or policy is None:
            return operation
        if policy.key_func is None:
            operation.setdefault("parameters", []).append(self._key_parameter(policy))
        responses = operation.setdefault("responses", {})
        for status, description in _answers(policy):
            responses.setdefault(str(status), self._problem_response(description, policy))
        return operation

    def _idempotency_policy(self, method: str) -> Policy | None:
        view: IdempotencyMixin = self.view  # type: ignore[assignment]
        try:
            policy = view.get_idempotency().policy
        except Exception:
            # A get_idempotency_*() getter that needs a real request: the
            # class's own attributes still say what is protected.
            from django_idempotency.rest_framework.mixins import protection

            policy = protection(view._idempotency_attributes(view)).policy
        return policy if method.upper() in policy.methods else None

    def _key_parameter(self, policy: Policy) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}
        if policy.key_pattern.pattern != DEFAULT_KEY_PATTERN:
            schema["pattern"] = policy.key_pattern.pattern
        return {
            "in": "header",
            "name": policy.header,
            "required": policy.required,
            "schema": schema,
            "description": (
                "A key the client makes up for this operation and sends again, "
                "unchanged, on every retry of it: the operation runs once, and "
                "retries get its stored response (marked Idempotent-Replayed: true)."
            ),
        }

    def _problem_response(self, description: str, policy: Policy) -> dict[str, Any]:
        if not self._answers_problems(policy):
            return {"description": description}
        component = ResolvedComponent(  # type: ignore[no-untyped-call]
            name=PROBLEM_COMPONENT,
            type=ResolvedComponent.SCHEMA,
            object=PROBLEM_COMPONENT,
            schema=PROBLEM_SCHEMA,
        )
        self.registry.register_on_missing(component)
        return {
            "description": description,
            "content": {"application/problem+json": {"schema": component.ref}},
        }

    def _answers_problems(self, policy: Policy) -> bool:
        """Whether errors are problem+json: no ``error_response`` option and
        DRF's own exception handler (see ``rest_framework.exceptions``)."""
        view = self.view
        return policy.error_response is None and (
            view.get_exception_handler() is drf_exception_handler
        )


def _answers(policy: Policy) -> list[tuple[int, str]]:
    in_use = 409 if policy.on_conflict == "wait" else policy.on_conflict
    answers = [
        (
            400,
            "The idempotency key is missing (where required) or invalid "
            "(idempotency_key_missing, idempotency_key_invalid).",
        ),
        (
            in_use,
            "A request with this idempotency key is still being processed "
            "(idempotency_key_in_use; retry after Retry-After), or was processed "
            "and its response cannot be replayed (idempotency_response_not_stored).",
        ),
        (422, "This idempotency key was used with a different request (idempotency_key_mismatch)."),
    ]
    if not policy.fail_open:
        answers.append(
            (503, "Idempotency keys cannot be checked right now (idempotency_storage_unavailable).")
        )
    return answers


#: The schema class made for each base, once.
_schema_classes: dict[type[AutoSchema], type[AutoSchema]] = {}


def _schema_class(base: type[AutoSchema]) -> type[AutoSchema]:
    if issubclass(base, IdempotencyAutoSchema):
        return base
    made = _schema_classes.get(base)
    if made is None:
        name = f"Idempotency{base.__name__}"
        made = _schema_classes[base] = type(name, (IdempotencyAutoSchema, base), {})
    return made


def with_idempotency(inspector: AutoSchema, view: Any) -> AutoSchema:
    """``inspector``, drf-spectacular's schema of ``view`` (an instance, or
    None when read from the class), with the idempotency header and answers."""
    schema = _schema_class(inspector.__class__)()  # (a weakref proxy for per-action schemas)
    schema.view = view
    return schema
