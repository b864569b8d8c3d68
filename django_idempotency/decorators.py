"""The ``@idempotent`` view decorator."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial, wraps
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction

from django_idempotency.engine import Idempotency

ViewFunc = TypeVar("ViewFunc", bound=Callable[..., Any])


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
    protection = Idempotency(options)

    def decorator(view_func: ViewFunc) -> ViewFunc:
        if isinstance(view_func, type):
            raise TypeError(
                f"idempotent() decorates view functions, not the class {view_func.__name__}: "
                "use method_decorator(idempotent) on its methods, or, for a DRF view, "
                "django_idempotency.rest_framework.IdempotencyMixin."
            )
        if _drf_view_class(view_func) is not None:
            from django_idempotency.rest_framework.decorators import protect_as_view

            return protect_as_view(view_func, options)  # type: ignore[return-value]
        if iscoroutinefunction(view_func):
            if protection.overrides.get("atomic"):
                raise TypeError(
                    f"idempotent(atomic=True) cannot protect the async view "
                    f"{view_func.__qualname__}: Django cannot hold a transaction open "
                    "across an async view."
                )

            @wraps(view_func)
            async def async_view(request: Any, *args: Any, **kwargs: Any) -> Any:
                call = partial(view_func, request, *args, **kwargs)
                return await protection.ahandle(request, call)

            wrapper: Any = async_view
        else:

            @wraps(view_func)
            def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                call = partial(view_func, request, *args, **kwargs)
                if _is_drf_request(request):
                    from django_idempotency.rest_framework.decorators import handle_in_view

                    return handle_in_view(protection, request, call)
                return protection.handle(request, call)

        wrapper.idempotency = protection
        return wrapper  # type: ignore[no-any-return]

    if view is not None:
        if not callable(view):
            raise TypeError(
                "idempotent() takes a view or keyword options: use @idempotent or "
                "@idempotent(ttl=...)."
            )
        return decorator(view)
    return decorator


# DRF is looked up in sys.modules, never imported: a DRF view or request means
# DRF is loaded already, and the core must work without it installed.


def _drf_view_class(view_func: Any) -> type | None:
    """The APIView class behind ``view_func`` if it is ``as_view()`` of one
    (``@api_view`` makes such a function), else None."""
    views = sys.modules.get("rest_framework.views")
    cls = getattr(view_func, "cls", None)
    if views is None or not isinstance(cls, type) or not issubclass(cls, views.APIView):
        return None
    return cls


def _is_drf_request(request: Any) -> bool:
    module = sys.modules.get("rest_framework.request")
    return module is not None and isinstance(request, module.Request)
