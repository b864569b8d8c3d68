"""The protection of one view: :class:`Idempotency`.

An adapter (the view decorator, the DRF mixin, or one of your own for
another framework) makes one :class:`Idempotency` per view from the view's
options, and runs each request through it in stages: :meth:`~Idempotency.enter`
claims the request's key, or answers instead of the view; the
:class:`~django_idempotency.exchange.Exchange` it returns for a won claim
then ends the request with ``finish(response)``, or ``abort()`` if the view
raised. Each stage has an async twin. :meth:`~Idempotency.handle` and
:meth:`~Idempotency.ahandle` run the stages around a view function. Every
decision is the exchange's (:mod:`django_idempotency.exchange`); this module
only drives the claim.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase

from django_idempotency import conf
from django_idempotency.errors import IdempotencyError, KeyMissing
from django_idempotency.exchange import EXCHANGE_ATTRIBUTE, Exchange, render_error
from django_idempotency.keys import get_key
from django_idempotency.policy import ErrorResponse, Policy, build_policy
from django_idempotency.records import RequestKey
from django_idempotency.storage.base import StorageError

__all__ = ["EXCHANGE_ATTRIBUTE", "Exchange", "Idempotency", "protects", "start"]


def start(
    request: HttpRequest, policy: Policy, errors: ErrorResponse | None = None
) -> Exchange | HttpResponseBase | None:
    """Before any I/O: an :class:`Exchange` to protect, an error response, or
    None when the request passes through unprotected (another method, no key
    where none is required, or a request already protected further out)."""
    if not protects(request, policy):
        return None
    try:
        key = get_key(request, policy)
        if key is None:
            if policy.required:
                raise KeyMissing()
            return None
    except IdempotencyError as error:
        return render_error(request, policy, error, errors)
    scope = policy.scope_func(request)
    fingerprint = policy.fingerprint_func(request)
    return Exchange(
        request, policy, RequestKey(scope=scope, key=key, fingerprint=fingerprint), errors
    )


def protects(request: HttpRequest, policy: Policy) -> bool:
    """Whether ``policy`` applies to ``request`` at all; no I/O."""
    return request.method in policy.methods and not hasattr(request, EXCHANGE_ATTRIBUTE)


class Idempotency:
    """The protection of one view: its options, parsed once and checked at
    decoration time, and the drivers that run a request through a store."""

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        *,
        label: conf.Label = conf.keyword_label,
    ) -> None:
        # label: how the view spells an option in error messages.
        self._label = label
        self.overrides = conf.parse_overrides(options or {}, label)
        self._policy: Policy | None = None
        self._generation = -1

    @property
    def policy(self) -> Policy:
        """The options merged over the settings, rebuilt when settings change."""
        generation = conf.generation()
        if self._policy is None or self._generation != generation:
            self._policy = build_policy(self.overrides, self._label)
            self._generation = generation
        return self._policy

    # -- the first stage, for adapters that run the view themselves ------------
    #
    # ``enter`` before the view; the Exchange it returns then ends the request
    # with ``finish`` (the view's response) or ``abort`` (the view raised).
    # The DRF mixin calls them from DRF's own stages; ``handle`` and
    # ``ahandle`` are the whole sequence around a view function.

    def enter(
        self, request: HttpRequest, *, errors: ErrorResponse | None = None
    ) -> Exchange | HttpResponseBase | None:
        """Claim the key of ``request``: an :class:`Exchange` that owns the
        claim (run the view, then its ``finish()`` or ``abort()``), a response
        to answer with instead of the view's, or None to run the view
        unprotected. ``errors`` renders this package's errors when the
        ``error_response`` option does not."""
        exchange = start(request, self.policy, errors)
        if not isinstance(exchange, Exchange):
            return exchange
        policy = exchange.policy
        storage = policy.storage
        exchange.joined = storage.joined_transaction()
        while True:
            sent = time.monotonic()
            try:
                with storage.independent():
                    claim = storage.claim(exchange.key, ttl=policy.ttl, lease=policy.lock_timeout)
            except StorageError as exc:
                return exchange.on_storage_error(exc)
            decision = exchange.on_claim(claim)
            if not isinstance(decision, float):
                break
            time.sleep(decision)
        if decision is not None:
            return decision
        exchange.hold_lease(sent)
        if policy.atomic:
            try:
                exchange.transaction = storage.begin()
            except StorageError as exc:
                exchange.abort("transaction failed to start")
                return exchange.commit_failed(exc)
        return exchange

    async def aenter(
        self, request: HttpRequest, *, errors: ErrorResponse | None = None
    ) -> Exchange | HttpResponseBase | None:
        """:meth:`enter` for async views.

        ``start`` runs in a thread: the default scope reads ``request.user``,
        which may query the session and user tables."""
        policy = self.policy
        if not protects(request, policy):
            return None
        if policy.atomic:
            raise ImproperlyConfigured(
                "atomic=True is for sync views: Django cannot hold a transaction "
                "open across an async view. Protect this view without atomic."
            )
        exchange = await sync_to_async(start)(request, policy, errors)
        if not isinstance(exchange, Exchange):
            return exchange
        storage = exchange.policy.storage
        ttl, lease = exchange.policy.ttl, exchange.policy.lock_timeout
        while True:
            sent = time.monotonic()
            try:
                claim = await storage.aclaim(exchange.key, ttl=ttl, lease=lease)
            except StorageError as exc:
                return exchange.on_storage_error(exc)
            decision = exchange.on_claim(claim)
            if decision is None:
                exchange.hold_lease(sent)
                return exchange
            if not isinstance(decision, float):
                return decision
            await asyncio.sleep(decision)

    # -- the whole sequence around a view function ------------------------------

    def handle(
        self,
        request: HttpRequest,
        call: Callable[[], HttpResponseBase],
        *,
        errors: ErrorResponse | None = None,
    ) -> HttpResponseBase:
        """Run a sync view under the protection: ``call()`` runs it."""
        entered = self.enter(request, errors=errors)
        if not isinstance(entered, Exchange):
            return entered if entered is not None else call()
        try:
            response = call()
        except BaseException as exc:
            entered.abort("exception", exc)
            raise
        return entered.finish(response)

    async def ahandle(
        self,
        request: HttpRequest,
        call: Callable[[], Awaitable[HttpResponseBase]],
        *,
        errors: ErrorResponse | None = None,
    ) -> HttpResponseBase:
        """Run an async view under the protection; the mirror of :meth:`handle`."""
        entered = await self.aenter(request, errors=errors)
        if not isinstance(entered, Exchange):
            return entered if entered is not None else await call()
        try:
            response = await call()
        except BaseException:
            await entered.aabort("exception")
            raise
        return await entered.afinish(response)
