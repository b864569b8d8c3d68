"""``IdempotencyMiddleware``: whole URL spaces protected by one setting.

The middleware protects the unsafe requests (``METHODS``) to the URLs that
``PROTECTED_URLS`` names, and nothing else. A protected request's view runs
as if ``@idempotent`` decorated it, with the options of the setting: the
middleware protects the view with the decorator (once per view) and calls it
from ``process_view()``, as Django would have called it: inside the
``ATOMIC_REQUESTS`` transactions, in the handler's sync or async mode.

The middleware leaves a view alone when it protects itself (``@idempotent``
on the view or its handlers, with the view's own options, or a DRF view with
:class:`~django_idempotency.rest_framework.IdempotencyMixin`), and when it is
marked :func:`~django_idempotency.decorators.idempotency_exempt`. A DRF view
without the mixin is protected as ``@idempotent`` protects one: by the
mixin's stages, after DRF's authentication, permissions and throttling.

Since the middleware answers the request itself, the ``process_view()`` of
middleware listed after it would not run for protected requests: the system
checks refuse such an order (``E040``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any
from weakref import WeakKeyDictionary

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponseBase

from django_idempotency import conf
from django_idempotency.decorators import exempt, idempotent, protects_itself

View = Callable[..., Any]


class IdempotencyMiddleware:
    """Protect the views of the URLs named in ``IDEMPOTENCY["PROTECTED_URLS"]``.

    Add it to ``MIDDLEWARE`` after every middleware that has a
    ``process_view()`` (``CsrfViewMiddleware``, ``LoginRequiredMiddleware``):
    at the end of the list is the simplest place."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        # Each view, protected once; None for views left alone. Keyed by the
        # view (weakly: URLconfs of tests come and go), then by method.
        self._protected: WeakKeyDictionary[View, dict[str, View | None]] = WeakKeyDictionary()
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)
            self.process_view = self._aprocess_view  # type: ignore[method-assign,assignment]

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: View, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> HttpResponseBase | None:
        protected = self.protected_view(request, view)
        if protected is None:
            return None
        if iscoroutinefunction(protected):
            protected = async_to_sync(protected)
        response: HttpResponseBase = protected(request, *args, **kwargs)
        return response

    async def _aprocess_view(
        self, request: HttpRequest, view: View, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> HttpResponseBase | None:
        protected = self.protected_view(request, view)
        if protected is None:
            return None
        if not iscoroutinefunction(protected):
            protected = sync_to_async(protected, thread_sensitive=True)
        call: Awaitable[HttpResponseBase] = protected(request, *args, **kwargs)
        return await call

    def protected_view(self, request: HttpRequest, view: View) -> View | None:
        """``view`` protected, and made atomic where Django would make it so,
        if the middleware protects ``request``; else None. No I/O."""
        setting = conf.global_options()
        method = request.method or ""
        if method not in setting["methods"] or not setting["protected_urls"].match(request):
            return None
        known = self._known(view)
        if method not in known:
            leave = exempt(view) or protects_itself(view, method)
            known[method] = None if leave else self._protect(view, known)
        protected = known[method]
        if protected is None:
            return None
        return atomic_requests(protected, getattr(view, "_non_atomic_requests", ()))

    def _known(self, view: View) -> dict[str, View | None]:
        """What is known of ``view``: its protected twin per method, or None."""
        try:
            known = self._protected.get(view)
            if known is None:
                known = self._protected[view] = {}
        except TypeError:  # a view that takes no weak reference: not cached
            known = {}
        return known

    @staticmethod
    def _protect(view: View, known: dict[str, View | None]) -> View:
        """``view`` under ``@idempotent``, one protection for every method."""
        for protected in known.values():
            if protected is not None:
                return protected
        return idempotent(view)


def atomic_requests(view: View, non_atomic: Collection[str] = ()) -> View:
    """``view`` in a transaction on each database with ``ATOMIC_REQUESTS``
    but the ``non_atomic`` ones (``@non_atomic_requests``), as Django's
    handler wraps the views it calls (``make_view_atomic``)."""
    for alias, settings_dict in connections.settings.items():
        if settings_dict["ATOMIC_REQUESTS"] and alias not in non_atomic:
            if iscoroutinefunction(view):
                raise RuntimeError("You cannot use ATOMIC_REQUESTS with async views.")
            view = transaction.atomic(using=alias)(view)
    return view
