"""OpenAPI for drf-spectacular: the idempotency header and answers of protected operations.

Imported by the app config when ``drf_spectacular`` is in ``INSTALLED_APPS``
(never by the rest of the package), which registers
:class:`IdempotencyViewExtension`. For each operation a view protects, the
generated schema then has:

- the key header as a parameter, required or not, with the key pattern when
  it is not the default; none when the key comes from the request itself
  (``key_func``);
- the answers of this package, next to the view's own: ``400`` (key missing
  or invalid), the in-use status (``409``, or ``on_conflict``), ``409`` (a
  response that cannot be replayed), ``422`` (key reused with another
  request) and ``503`` (store unavailable, unless ``fail_open``), as
  ``application/problem+json`` with the ``IdempotencyProblem`` schema when
  that is what the view answers, else with a description only.

Protected operations are those of views with
:class:`~django_idempotency.rest_framework.IdempotencyMixin` (``@idempotent``
above ``@api_view`` makes one) whose method is in the view's ``methods``, and
those whose handler is decorated by ``@idempotent`` (below ``@api_view``, or
through ``method_decorator``).

How, and why so: through public extension points only. drf-spectacular
documents an operation with the view's ``schema``, DRF's own attribute,
which ``@extend_schema`` and projects customise by subclassing. A protected
view's ``schema`` is a :class:`~.view_schema.ProtectedSchema`: the mixin has one,
wrapping the schema the view's class would have (its own, the next class's,
or the one drf-spectacular assigns to the view for a method decorated with
``@extend_schema``); the DRF adapter puts one on each function
``@idempotent`` wraps, which DRF's ``@api_view`` takes as the view's schema
as it takes the one DRF's ``@schema`` sets. This module registers
:func:`with_idempotency` with it, which returns that schema with
:class:`IdempotencyAutoSchema` mixed in: the project's schema class,
``@extend_schema`` on the view and on its methods and actions all keep
working, and only add to what the operation shows. For views whose handlers
are decorated through ``method_decorator``, :class:`IdempotencyViewExtension`
(a view extension, drf-spectacular's public registration) replaces the view
for the generation by a subclass with such a schema; it has a priority below
the default, so a project's own view extension for the same view wins.
Views without protection are left as they are.

drf-spectacular describes an operation by the first docstring among the
view's classes, which for a view without one is the mixin's: the schema of
protected views skips it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ComponentRegistry, ResolvedComponent, get_doc
from drf_spectacular.utils import OpenApiParameter
from rest_framework.views import APIView
from rest_framework.viewsets import ViewSetMixin

from django_idempotency import openapi
from django_idempotency.engine import Idempotency
from django_idempotency.policy import Policy
from django_idempotency.rest_framework.exceptions import error_renderer
from django_idempotency.rest_framework.mixins import (
    IdempotencyMixin,
    view_protection,
)
from django_idempotency.rest_framework.view_schema import ProtectedSchema, schema_wrappers

CODE_COMPONENT = openapi.CODE_COMPONENT


# -- which operations are protected, and how ---------------------------------------------


def operation_policy(
    view: APIView, method: str, handler_protection: Idempotency | None = None
) -> Policy | None:
    """The policy protecting ``method`` on ``view`` (an instance made for the
    schema), or None when the operation is not protected.
    ``handler_protection``: that of the function behind an ``@api_view``
    view, which its schema knows (see :class:`.view_schema.ProtectedSchema`)."""
    method = method.upper()
    handler = _handler(view, method)
    if handler is None:
        return None
    if isinstance(view, IdempotencyMixin):
        policy = _mixin_policy(view)
        if method in policy.methods:
            return policy
    decorated = handler_protection or protection_of(handler)
    if decorated is not None and method in decorated.policy.methods:
        return decorated.policy
    return None


def _handler(view: APIView, method: str) -> Callable[..., Any] | None:
    if isinstance(view, ViewSetMixin):
        name: str | None = getattr(view, "action", None)
    else:
        name = method.lower()
    handler = getattr(view, name, None) if name else None
    return handler if callable(handler) else None


def _mixin_policy(view: IdempotencyMixin) -> Policy:
    try:
        return view_protection(view).policy
    except Exception:
        # get_idempotency_options() may need a real request (the schema's is
        # a mock): the view's own options still say what it protects.
        return view._idempotency_protection.policy


def protection_of(handler: Any) -> Idempotency | None:
    """The protection of a handler decorated by ``@idempotent`` (through
    ``method_decorator``, which keeps the decorator's attributes), or None."""
    found = getattr(getattr(handler, "__func__", handler), "idempotency", None)
    return found if isinstance(found, Idempotency) else None


def is_protected(view_class: type[APIView], handler_names: Iterable[str]) -> bool:
    """Whether ``view_class`` protects any operation: it has the mixin, or
    one of its handlers is decorated."""
    return issubclass(view_class, IdempotencyMixin) or any(
        protection_of(getattr(view_class, name, None)) is not None for name in handler_names
    )


# -- the schema class ----------------------------------------------------------------------


class IdempotencyAutoSchema(AutoSchema):
    """drf-spectacular's ``AutoSchema`` with the idempotency header and answers
    of the operations the view protects. Mixed into the view's own schema class
    by :class:`IdempotencyViewExtension`; may also be used as a base class."""

    _idempotency_policy: Policy | None = None
    #: The protection of the function behind an ``@api_view`` view.
    _idempotency_handler: Idempotency | None = None

    def get_operation(
        self,
        path: str,
        path_regex: str,
        path_prefix: str,
        method: str,
        registry: ComponentRegistry,
    ) -> dict[str, Any] | None:
        self._idempotency_policy = policy = operation_policy(
            self.view, method, self._idempotency_handler
        )
        operation: dict[str, Any] | None = super().get_operation(
            path, path_regex, path_prefix, method, registry
        )
        if operation is None or policy is None:
            return operation
        responses = operation.setdefault("responses", {})
        content = self._error_content(policy)
        answers = openapi.answers(policy)
        for status, answer in answers.items():
            if str(status) in responses:
                continue  # the view documents it itself
            if content is not None:
                answer["content"] = content
            responses[str(status)] = answer
        return operation

    def get_override_parameters(self) -> list[Any]:
        # Ours first: a parameter of the same name that the view declares
        # (@extend_schema(parameters=...)) replaces or, excluded, removes it.
        parameters: list[Any] = super().get_override_parameters()
        policy = self._idempotency_policy
        if policy is None or policy.key_func is not None:
            return parameters
        return [key_parameter(policy), *parameters]

    def _error_content(self, policy: Policy) -> dict[str, Any] | None:
        """The content of the package's answers, where they are in one of
        its own formats (:data:`.openapi.FORMATS`): the ``error_response``
        option's, else the view's (see ``rest_framework.exceptions``).
        None for a project's own format, described in words only."""
        known = openapi.FORMATS.get(policy.error_response or error_renderer(self.view))
        if known is None:
            return None
        name, media_type, schema = known
        code = self._component(CODE_COMPONENT, openapi.CODE_SCHEMA)
        return {media_type: {"schema": self._component(name, schema(code))}}

    def _component(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """A reference to the component ``name`` with ``schema``, registered once."""
        component = ResolvedComponent(  # type: ignore[no-untyped-call]
            name=name, type=ResolvedComponent.SCHEMA, object=name, schema=schema
        )
        self.registry.register_on_missing(component)
        ref: dict[str, Any] = component.ref
        return ref

    def get_description(self) -> str:  # type: ignore[override]  # (as AutoSchema's)
        description: str = super().get_description()
        if not isinstance(self.view, IdempotencyMixin) or description != get_doc(IdempotencyMixin):
            return description
        # drf-spectacular describes a view by the first docstring of its
        # classes, and took the mixin's: the view's own is past the mixin.
        mro = type(self.view).__mro__
        after = mro[mro.index(IdempotencyMixin) + 1]
        doc: str = get_doc(after)
        return doc


def key_parameter(policy: Policy) -> OpenApiParameter:
    parameter = openapi.key_parameter(policy)
    return OpenApiParameter(
        name=parameter["name"],
        type=parameter["schema"],
        location=OpenApiParameter.HEADER,
        required=parameter["required"],
        description=parameter["description"],
    )


# -- the schema, mixed into the view's ---------------------------------------------------------

#: The schema class made for each base, once.
_schema_classes: dict[type[AutoSchema], type[IdempotencyAutoSchema]] = {}


def _schema_class(base: type[AutoSchema]) -> type[IdempotencyAutoSchema]:
    if issubclass(base, IdempotencyAutoSchema):
        return base
    made = _schema_classes.get(base)
    if made is None:
        made = type(f"Idempotency{base.__name__}", (IdempotencyAutoSchema, base), {})
        _schema_classes[base] = made
    return made


def with_idempotency(inspector: Any, view: Any, protection: Idempotency | None = None) -> Any:
    """``inspector``, the schema drf-spectacular would use for ``view`` (an
    instance, or None when read from the class), with
    :class:`IdempotencyAutoSchema` mixed in: a copy of it, of a class made
    from its own. Registered with :data:`.view_schema.schema_wrappers`, which
    every protected view's ``schema`` passes through."""
    if isinstance(inspector, IdempotencyAutoSchema):
        # Assigned to the view by drf-spectacular, of a class made from ours.
        if protection is not None:
            inspector._idempotency_handler = protection
        return inspector
    if not isinstance(inspector, AutoSchema):
        return inspector
    # inspector.__class__ and vars(): inspector may be a weakref proxy, as the
    # schemas drf-spectacular assigns to views for decorated methods are.
    cls = _schema_class(inspector.__class__)
    schema = cls.__new__(cls)
    vars(schema).update(vars(inspector))
    schema.view = view
    schema._idempotency_handler = protection
    return schema


schema_wrappers.append(with_idempotency)


class IdempotencyViewExtension(OpenApiViewExtension):  # type: ignore[no-untyped-call]
    """Replaces each view whose handlers ``@idempotent`` protects through
    ``method_decorator``, for the schema generation only, by a subclass
    whose ``schema`` documents the protection (views with the mixin, and
    ``@api_view`` functions, have such a schema already).

    Its priority is below the default: a project's own view extension for
    such a view is chosen instead (drf-spectacular applies one per view)."""

    target_class = APIView
    match_subclasses = True
    priority = -1

    #: The replacement made for each view class, once: drf-spectacular tells
    #: views apart by their class.
    _replacements: ClassVar[dict[type[APIView], type[APIView]]] = {}

    def view_replacement(self) -> type[APIView]:
        view_class: type[APIView] = self.target
        actions = getattr(self.target_callback, "actions", None)
        handler_names = actions.values() if actions else view_class.http_method_names
        if issubclass(view_class, IdempotencyMixin) or not is_protected(view_class, handler_names):
            return view_class
        replacement = self._replacements.get(view_class)
        if replacement is None:
            namespace = {
                "schema": ProtectedSchema(),
                "__module__": view_class.__module__,
                "__qualname__": view_class.__qualname__,
                "__doc__": view_class.__doc__,
            }
            replacement = type(view_class.__name__, (view_class,), namespace)
            self._replacements[view_class] = replacement
        return replacement
