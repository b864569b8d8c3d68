"""The ``@idempotent`` view decorator."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
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

    Works on sync and async function views, and on methods of class-based
    views through ``method_decorator``. The options are validated here, at
    import time; their defaults come from the ``IDEMPOTENCY`` setting, read
    when requests arrive.
    """
    protection = Idempotency(options)

    def decorator(view_func: ViewFunc) -> ViewFunc:
        if iscoroutinefunction(view_func):

            @wraps(view_func)
            async def async_view(request: Any, *args: Any, **kwargs: Any) -> Any:
                return await protection.ahandle(request, view_func, *args, **kwargs)

            wrapper: Any = async_view
        else:

            @wraps(view_func)
            def wrapper(request: Any, *args: Any, **kwargs: Any) -> Any:
                return protection.handle(request, view_func, *args, **kwargs)

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
