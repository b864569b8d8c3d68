"""The ``@idempotent`` view decorator.

The decorator knows Django views only. Another framework whose views or
requests need handling of their own registers a :class:`ViewAdapter` when
its adapter module is imported: the DRF one does, for ``@api_view``
functions and the handlers of API views (``django_idempotency.rest_framework``,
imported by the app config when DRF is installed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial, wraps
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction
from django.http import HttpResponseBase

from django_idempotency import conf
from django_idempotency.engine import Idempotency

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., Any])


class ViewAdapter:
    """What another framework's adapter changes in ``@idempotent``.

    Subclass it and pass an instance to :func:`register_adapter` when the
    adapter's module is imported."""

    #: The class of the framework's requests, as its views receive them:
    #: a decorated function called with one runs through :meth:`handle`.
    request_class: type | None = None

    def protect(self, view: Any, options: Mapping[str, Any]) -> Any | None:
        """``view`` protected the framework's own way, with the parsed
        per-view ``options``, if it is one of the framework's views (such as
        the result of DRF's ``@api_view``); None to let the decorator wrap it."""
        return None

    def handle(
        self, protection: Idempotency, request: Any, call: Callable[[], HttpResponseBase]
    ) -> HttpResponseBase:
        """Run ``call()``, a decorated function called with a request of
        :attr:`request_class`, under ``protection``."""
        raise NotImplementedError

    def protects_itself(self, view: Any, method: str) -> bool:
        """Whether ``view``, a Django view of the framework's, protects its
        ``method`` requests itself (a DRF view with the mixin), so that
        :class:`~django_idempotency.middleware.IdempotencyMiddleware` leaves
        them to it. False here."""
        return False

    def decorated(self, view: Any, protection: Idempotency) -> None:
        """Called with each view the decorator wrapped itself (whose
        ``idempotency`` attribute is ``protection``), which may become one of
        the framework's views later (such as a function that DRF's
        ``@api_view`` is applied to next). Nothing here."""


_adapters: list[ViewAdapter] = []
_handled_requests: tuple[type, ...] = ()


def register_adapter(adapter: ViewAdapter) -> None:
    """Have ``@idempotent`` consult ``adapter`` (once per adapter class)."""
    global _handled_requests
    if any(type(known) is type(adapter) for known in _adapters):
        return
    _adapters.append(adapter)
    _handled_requests = tuple(a.request_class for a in _adapters if a.request_class is not None)


@overload
def idempotent(view: ViewFunc, /) -> ViewFunc: ...


@overload
def idempotent(view: None = None, /, **options: Any) -> Callable[[ViewFunc], ViewFunc]: ...


def idempotent(view: Any = None, /, **options: Any) -> Any:
    """Make a view idempotent: ``@idempotent`` or ``@idempotent(ttl=..., ...)``.

    Works on sync and async function views, on methods of class-based views
    through ``method_decorator``, and on DRF views: above ``@api_view`` (or
    on ``SomeAPIView.as_view()``) it protects the view as
    :class:`~django_idempotency.rest_framework.IdempotencyMixin` would. The
    options are validated here, at import time; their defaults come from the
    ``IDEMPOTENCY`` setting, read when requests arrive.
    """
    overrides = conf.parse_overrides(options)
    # One protection for every view this decorator wraps, made with the
    # first: method_decorator applies the decorator on each call of the method.
    protection: Idempotency | None = None

    def decorator(view_func: ViewFunc) -> ViewFunc:
        nonlocal protection
        if isinstance(view_func, type):
            raise TypeError(
                f"idempotent() decorates view functions, not the class {view_func.__name__}: "
                "use method_decorator(idempotent) on its methods, or, for a DRF view, "
                "django_idempotency.rest_framework.IdempotencyMixin."
            )
        for adapter in _adapters:
            adapted = adapter.protect(view_func, overrides)
            if adapted is not None:
                return adapted  # type: ignore[no-any-return]
        if protection is None:
            protection = Idempotency(overrides)
        protected = protection  # (for the closures below: never None)
        if iscoroutinefunction(view_func):
            if overrides.get("atomic"):
                raise TypeError(
                    f"idempotent(atomic=True) cannot protect the async view "
                    f"{view_func.__qualname__}: Django cannot hold a transaction open "
                    "across an async view."
                )

            @wraps(view_func)
            async def async_view(request: Any, *args: Any, **kwargs: Any) -> Any:
                call = partial(view_func, request, *args, **kwargs)
                return await protected.ahandle(request, call)

            wrapper: Any = async_view
        else:

            @wraps(view_func)
            def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                call = partial(view_func, request, *args, **kwargs)
                if isinstance(request, _handled_requests):
                    return _adapter_of(request).handle(protected, request, call)
                return protected.handle(request, call)

        wrapper.idempotency = protected
        for adapter in _adapters:
            adapter.decorated(wrapper, protected)
        return wrapper  # type: ignore[no-any-return]

    if view is not None:
        if not callable(view):
            raise TypeError(
                "idempotent() takes a view or keyword options: use @idempotent or "
                "@idempotent(ttl=...)."
            )
        return decorator(view)
    return decorator


def idempotency_exempt(view: ViewFunc) -> ViewFunc:
    """Leave ``view`` out of what
    :class:`~django_idempotency.middleware.IdempotencyMiddleware` protects.

    Decorate a function view, the result of ``as_view()``, or a view class
    (a Django or DRF class-based view, a viewset). Like ``csrf_exempt``, it
    marks the view and changes nothing else."""
    view.idempotency_exempt = True  # type: ignore[attr-defined]
    return view


def protects_itself(view: Any, method: str) -> bool:
    """Whether ``view`` (as URL resolution returns it) runs a protection of
    its own for ``method`` requests: ``@idempotent`` on it, on its class's
    ``dispatch()`` or on the handler of the method (``method_decorator``),
    or a framework's own (:meth:`ViewAdapter.protects_itself`)."""
    if getattr(view, "idempotency", None) is not None:
        return True
    view_class = getattr(view, "view_class", None)
    handler = getattr(view_class, method.lower(), None)
    if getattr(handler, "idempotency", None) is not None:
        return True
    return any(adapter.protects_itself(view, method) for adapter in _adapters)


def exempt(view: Any) -> bool:
    """Whether ``view`` or its class is marked :func:`idempotency_exempt`."""
    view_class = getattr(view, "view_class", None)
    return bool(
        getattr(view, "idempotency_exempt", False)
        or getattr(view_class, "idempotency_exempt", False)
    )


def _adapter_of(request: Any) -> ViewAdapter:
    return next(a for a in _adapters if a.request_class and isinstance(request, a.request_class))
