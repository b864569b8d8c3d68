"""The ``schema`` of protected DRF views: :class:`ProtectedSchema`.

DRF's views have a ``schema`` attribute, which schema generators read. The
mixin, and each function ``@idempotent`` wraps (which DRF's ``@api_view``
takes over), have a :class:`ProtectedSchema`, through which the OpenAPI
integration (``rest_framework.schema``, for drf-spectacular) adds the
idempotency header and answers to whatever schema the view would have.
Without it, a protected view's schema is the one it would have anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from django_idempotency.engine import Idempotency

#: What documents a protected view's operations, registered by the OpenAPI
#: integration (``rest_framework.schema``) when drf-spectacular is used:
#: called with the schema a view would otherwise have, the view (an
#: instance, or None when read from the class) and the protection of its
#: handler when the schema knows it, it returns the schema to use.
schema_wrappers: list[Callable[[Any, Any, Idempotency | None], Any]] = []


class ProtectedSchema:
    """The ``schema`` of a protected view (DRF's own attribute, which schema
    generators read): the one the view would have otherwise, passed through
    :data:`schema_wrappers`. That is the schema of the next class in the
    view's MRO that has one, the one set on the class itself (wrapped when
    the class is defined), or one a generator assigned to the view instance
    (drf-spectacular does, for a method decorated with ``@extend_schema``).
    With ``protection``, it is the schema of a handler that ``@idempotent``
    protects (set on the function, where DRF's ``@api_view`` finds it).

    Requests never read it: it costs nothing when no schema is generated."""

    def __init__(self, inner: Any = None, protection: Idempotency | None = None) -> None:
        self.inner = inner
        self.protection = protection
        self.assigned: WeakKeyDictionary[Any, Any] = WeakKeyDictionary()

    def __get__(self, instance: Any, owner: type[Any]) -> Any:
        if instance is not None and instance in self.assigned:
            schema = self.assigned[instance]
        else:
            schema = _bound(self._inner(owner), instance, owner)
        for wrap in schema_wrappers:
            schema = wrap(schema, instance, self.protection)
        return schema

    def __set__(self, instance: Any, value: Any) -> None:
        # As DRF's ViewInspector does.
        self.assigned[instance] = value
        if value is not None:
            value.view = instance

    def _inner(self, owner: type[Any]) -> Any:
        if self.inner is not None:
            return self.inner
        for cls in owner.__mro__:  # the mixin's own: the next class's schema
            if "schema" not in vars(cls):
                continue
            found = vars(cls)["schema"]
            if not isinstance(found, ProtectedSchema):
                return found
            if found.inner is not None:
                return found.inner
        return None


def _bound(schema: Any, instance: Any, owner: type[Any]) -> Any:
    get = getattr(type(schema), "__get__", None)
    return schema if get is None else get(schema, instance, owner)
