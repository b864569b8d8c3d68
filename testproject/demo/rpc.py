"""A small JSON-RPC framework, as another framework might be: handlers
return data, and the dispatcher renders it (or its errors) as JSON.

It knows nothing of idempotency. Each method may have an ``around``: an
object the dispatcher calls with the request and the rest of the call, sync
or async (``around(request, call)`` and ``await around.acall(request,
call)``). ``demo.rpc_idempotency`` is one, the adapter of
``docs/howto/other-frameworks.rst``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

Handler = Callable[..., Any]


def error(code: str, message: str, status: int) -> JsonResponse:
    """An error, as the dispatcher answers every error."""
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


class Dispatcher:
    def __init__(self) -> None:
        self.methods: dict[str, tuple[Handler, Any]] = {}

    def method(self, name: str, *, around: Any = None) -> Callable[[Handler], Handler]:
        """Register a handler, ``(request, **params) -> data``, as ``name``."""

        def register(handler: Handler) -> Handler:
            self.methods[name] = (handler, around)
            return handler

        return register

    def _find(self, request: HttpRequest) -> tuple[Handler, Any, dict[str, Any]] | JsonResponse:
        try:
            call = json.loads(request.body)
            handler, around = self.methods[call["method"]]
            params = dict(call.get("params", {}))
        except (ValueError, KeyError, TypeError):
            return error("invalid_call", "No such method, or not a JSON-RPC call.", 400)
        return handler, around, params

    @csrf_exempt
    def view(self, request: HttpRequest) -> HttpResponseBase:
        found = self._find(request)
        if isinstance(found, JsonResponse):
            return found
        handler, around, params = found
        call = partial(_render, handler, request, params)
        return call() if around is None else around(request, call)

    @csrf_exempt
    async def aview(self, request: HttpRequest) -> HttpResponseBase:
        found = self._find(request)
        if isinstance(found, JsonResponse):
            return found
        handler, around, params = found
        call = partial(_arender, handler, request, params)
        return await (call() if around is None else around.acall(request, call))


def _render(handler: Handler, request: HttpRequest, params: dict[str, Any]) -> JsonResponse:
    return JsonResponse({"result": handler(request, **params)})


async def _arender(
    handler: Callable[..., Awaitable[Any]] | Handler, request: HttpRequest, params: dict[str, Any]
) -> JsonResponse:
    if iscoroutinefunction(handler):
        return JsonResponse({"result": await handler(request, **params)})
    return _render(handler, request, params)
