"""Idempotent JSON-RPC methods: the adapter of ``demo.rpc`` to django-idempotency.

Shown whole in ``docs/howto/other-frameworks.rst``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase

from demo.rpc import error
from django_idempotency.engine import Idempotency
from django_idempotency.errors import IdempotencyError
from django_idempotency.exchange import Exchange


def rpc_error(request: HttpRequest, error_: IdempotencyError) -> HttpResponseBase:
    """This package's answers (a conflict, a key reused with other
    parameters, a store that is down) as the dispatcher answers errors."""
    response = error(error_.code, error_.detail, error_.status)
    for name, value in error_.headers.items():  # Retry-After
        response[name] = value
    return response


class Idempotent:
    """``around=Idempotent(required=True, ...)``: the method runs once per
    key. Takes the options of ``@idempotent``, checked here, at import."""

    def __init__(self, **options: Any) -> None:
        self.protection = Idempotency(options, label=lambda name: f"Idempotent({name}=...)")

    def __call__(self, request: HttpRequest, call: Callable[[], HttpResponseBase]) -> Any:
        # 1. Claim the key: an Exchange if this request runs the method, a
        #    response to answer instead (a replay, an error), or None to run
        #    it unprotected (another HTTP method, no key where none is required).
        entered = self.protection.enter(request, errors=rpc_error)
        if not isinstance(entered, Exchange):
            return entered if entered is not None else call()
        # 2. Run the method, and end the exchange either way.
        try:
            response = call()
        except BaseException as exc:
            entered.abort("exception", exc)  # released: a retry runs it again
            raise
        return entered.finish(response)  # stored, once its writes commit

    async def acall(
        self, request: HttpRequest, call: Callable[[], Awaitable[HttpResponseBase]]
    ) -> Any:
        # The same stages with their async twins (aenter, afinish, aabort),
        # in the one call that runs them around call().
        return await self.protection.ahandle(request, call, errors=rpc_error)
