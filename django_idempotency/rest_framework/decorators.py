"""``@idempotent`` on DRF views, in either place it can be put.

Above ``@api_view`` (or on ``SomeAPIView.as_view()``), the decorator gets a
finished Django view and rebuilds it from a subclass of its APIView with
:class:`IdempotencyMixin` first: the protection then runs at the mixin's
stages, after DRF's authentication, permissions and throttling.

Below ``@api_view`` (or through ``method_decorator`` on an APIView method),
it wraps the handler itself, which DRF calls after those checks; exceptions
of the handler go through the view's ``handle_exception()`` first, so that a
``ValidationError`` is the same stored 400 it is under the mixin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar
from weakref import WeakKeyDictionary

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponseBase
from rest_framework.request import Request
from rest_framework.views import APIView

from django_idempotency.decorators import ViewAdapter, register_adapter
from django_idempotency.engine import Idempotency
from django_idempotency.rest_framework.exceptions import error_renderer
from django_idempotency.rest_framework.mixins import (
    ATTRIBUTE_PREFIX,
    IdempotencyMixin,
)
from django_idempotency.rest_framework.view_schema import ProtectedSchema


class RestFrameworkAdapter(ViewAdapter):
    """``@idempotent`` on DRF views: above ``@api_view`` (or on
    ``as_view()``) the view is rebuilt with the mixin; a handler called with
    DRF's ``Request`` runs with DRF's exception handling."""

    request_class = Request

    def protect(self, view: Any, options: Mapping[str, Any]) -> Any | None:
        cls = getattr(view, "cls", None)
        if isinstance(cls, type) and issubclass(cls, APIView):
            return protect_as_view(view, options)
        return None

    def handle(
        self, protection: Idempotency, request: Any, call: Callable[[], HttpResponseBase]
    ) -> HttpResponseBase:
        return handle_in_view(protection, request, call)

    def protects_itself(self, view: Any, method: str) -> bool:
        cls = getattr(view, "cls", None)
        if not (isinstance(cls, type) and issubclass(cls, APIView)):
            return False
        if issubclass(cls, IdempotencyMixin):
            return True
        # @api_view above @idempotent: the function's protection went to
        # the class with its schema (see decorated() below).
        schema = vars(cls).get("schema")
        if isinstance(schema, ProtectedSchema) and schema.protection is not None:
            return True
        # A viewset's handler is its action's method (method_decorator).
        action = (getattr(view, "actions", None) or {}).get(method.lower())
        handler = getattr(cls, action, None) if action else None
        return getattr(handler, "idempotency", None) is not None

    def decorated(self, view: Any, protection: Idempotency) -> None:
        # DRF's @api_view gives the view it makes the function's schema (as
        # its @schema decorator sets it): the protection goes with it, for
        # the OpenAPI schema. Not over a schema set below (@schema(None)).
        if "schema" not in vars(view):
            schema = self._schemas.get(protection)
            if schema is None:
                schema = self._schemas[protection] = ProtectedSchema(
                    vars(APIView)["schema"], protection
                )
            view.schema = schema

    #: One schema per protection: method_decorator decorates on every call.
    _schemas: ClassVar[WeakKeyDictionary[Idempotency, ProtectedSchema]] = WeakKeyDictionary()


def protect_as_view(view_func: Any, options: Mapping[str, Any]) -> Callable[..., Any]:
    """``view_func`` (the result of ``as_view()``) rebuilt with the mixin and
    ``options`` as its ``idempotency_*`` attributes."""
    cls: type[APIView] = view_func.cls
    if issubclass(cls, IdempotencyMixin):
        raise TypeError(
            f"idempotent(): {cls.__qualname__} is already protected by IdempotencyMixin; "
            "set its options as idempotency_* class attributes instead."
        )
    attributes: dict[str, Any] = {ATTRIBUTE_PREFIX + name: value for name, value in options.items()}
    attributes["__module__"] = cls.__module__
    attributes["__qualname__"] = cls.__qualname__
    attributes["__doc__"] = cls.__doc__
    protected: Any = type(cls.__name__, (IdempotencyMixin, cls), attributes)
    actions = getattr(view_func, "actions", None)
    if actions is not None:  # a viewset's view: as_view({"post": "create"}, ...)
        return protected.as_view(actions, **view_func.initkwargs)  # type: ignore[no-any-return]
    return protected.as_view(**view_func.initkwargs)  # type: ignore[no-any-return]


def handle_in_view(
    protection: Idempotency, request: Request, call: Callable[[], HttpResponseBase]
) -> HttpResponseBase:
    """Run a DRF handler under ``protection``, exceptions handled as DRF would."""
    view: APIView = request.parser_context["view"]
    if protection.policy.atomic:
        raise ImproperlyConfigured(
            "atomic=True cannot protect a DRF handler from inside: the response is "
            "rendered after the handler returns, outside its transaction. Put "
            "@idempotent above @api_view, or use IdempotencyMixin."
        )
    return protection.handle(
        request, partial(_exceptions_handled, view, call), errors=error_renderer(view)
    )


def _exceptions_handled(view: APIView, call: Callable[[], HttpResponseBase]) -> HttpResponseBase:
    try:
        return call()
    except Exception as exc:
        response: HttpResponseBase = view.handle_exception(exc)
        return response


register_adapter(RestFrameworkAdapter())
