"""The decisions: what a protected request gets, in one place.

:class:`Idempotency` is the configured protection of one view, and the only
code that talks to a store. It runs a request in three stages: ``enter``
(claim the key, or answer instead of the view), then ``finish`` with the
view's response or ``abort`` if the view raised; each has an async twin.
``handle`` and ``ahandle`` run the three around a view function. Every
decision (run, replay, refuse, wait, store or release) is taken by
:class:`Exchange`, which does no I/O of its own. Adapters (the view
decorator, the DRF mixin) call these stages; none takes a decision of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase

from django_idempotency import conf, leases, signals, transactions
from django_idempotency.errors import (
    IdempotencyError,
    KeyInUse,
    KeyMismatch,
    KeyMissing,
    ResponseNotStored,
    StorageUnavailable,
    TransactionRolledBack,
    problem_response,
)
from django_idempotency.keys import get_key
from django_idempotency.policy import ErrorResponse, Policy, build_policy
from django_idempotency.records import Claim, RequestKey, StoredResponse
from django_idempotency.responses import (
    capture,
    defer_until_rendered,
    render_now,
    replay,
)
from django_idempotency.storage.base import BaseStorage, StorageError, StoreTransaction

logger = logging.getLogger("django_idempotency")

T = TypeVar("T")

#: How long ``on_conflict="wait"`` sleeps between looks at the first request:
#: from the first delay, doubling up to the longest.
WAIT_FIRST_DELAY = 0.05
WAIT_LONGEST_DELAY = 0.5

#: ``Retry-After`` of the in-use answer, in seconds.
RETRY_AFTER = "1"

#: The request attribute that holds the :class:`Exchange` whose claim the
#: request owns. A protection nested inside another (a decorated view called
#: from a decorated view) then lets the request through instead of answering
#: it as a duplicate of itself.
EXCHANGE_ATTRIBUTE = "idempotency_exchange"


class Exchange:
    """One protected request: its key, its claim, and every decision about it."""

    def __init__(
        self,
        request: HttpRequest,
        policy: Policy,
        key: RequestKey,
        errors: ErrorResponse | None = None,
    ) -> None:
        self.request = request
        self.policy = policy
        self.key = key
        self.errors = errors
        self.token: str | None = None
        #: In atomic mode, the transaction of the view's writes, from the
        #: claim until :meth:`Idempotency.finish` or :meth:`Idempotency.abort`.
        self.transaction: StoreTransaction | None = None
        #: The database alias of the transaction around the request that the
        #: claim joined (:meth:`BaseStorage.joined_transaction`), if it did:
        #: the claim is then rolled back with that transaction.
        self.joined: str | None = None
        #: The lease of the claim, renewed while the view runs (None where
        #: the claim joined the request's transaction: nothing else sees it).
        self.lease: leases.Lease | None = None
        self._deadline: float | None = None
        self._delay = WAIT_FIRST_DELAY

    @property
    def claim_rolled_back(self) -> bool:
        """Whether the claim joined a transaction around the request that is
        now marked for rollback: the key is free again with it."""
        return self.joined is not None and transactions.rolled_back(using=self.joined)

    @property
    def claim_token(self) -> str:
        """The token of the claim this request owns (only once it won it)."""
        assert self.token is not None, "the request does not own a claim"
        return self.token

    # -- before the view -------------------------------------------------------

    def on_claim(self, claim: Claim) -> HttpResponseBase | float | None:
        """After a claim: None to run the view, a response to answer with, or
        a number of seconds to sleep before claiming again (``"wait"``)."""
        if claim.token is not None:
            self.token = claim.token
            setattr(self.request, EXCHANGE_ATTRIBUTE, self)
            self._signal(signals.key_claimed, "claimed", logging.DEBUG)
            return None
        record = claim.record
        assert record is not None
        if not hmac.compare_digest(record.fingerprint, self.key.fingerprint):
            self._signal(signals.key_mismatch, "reused with a different request", logging.WARNING)
            return self.error(KeyMismatch())
        if record.response is None:
            if self._deadline is None:  # once per request, however long it waits
                self._signal(signals.key_conflict, "still in progress", logging.INFO)
            delay = self._next_delay()
            if delay is not None:
                return delay
            status = None if self.policy.on_conflict == "wait" else self.policy.on_conflict
            return self.error(KeyInUse(status=status, headers={"Retry-After": RETRY_AFTER}))
        self._signal(signals.key_replayed, "replayed", logging.INFO)
        return self.duplicate(record.response)

    def duplicate(self, stored: StoredResponse) -> HttpResponseBase:
        """The answer to a duplicate of a completed request."""
        if self.policy.duplicate_response is not None:
            return self.policy.duplicate_response(self.request, stored)
        if not stored.replayable:
            return self.error(ResponseNotStored(original_status=stored.status))
        return replay(stored, self.policy.replay_status)

    def _next_delay(self) -> float | None:
        if self.policy.on_conflict != "wait":
            return None
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.policy.wait_timeout
        if now >= self._deadline:
            return None
        delay = min(self._delay, self._deadline - now)
        self._delay = min(self._delay * 2, WAIT_LONGEST_DELAY)
        return delay

    def on_storage_error(self, exc: StorageError) -> HttpResponseBase | None:
        """The store failed at claim time: a 503, or None to run the view
        unprotected when ``fail_open`` is set."""
        if self.policy.fail_open:
            logger.warning(
                "Idempotency store unavailable (%s); running the view unprotected "
                "because fail_open is set. key=%s",
                exc,
                self.key.log_id,
            )
            return None
        logger.error("Idempotency store unavailable (%s). key=%s", exc, self.key.log_id)
        return self.error(StorageUnavailable(headers={"Retry-After": RETRY_AFTER}))

    def hold_lease(self, since: float) -> None:
        """The claim sent at ``since`` (monotonic) is won: keep its lease
        alive while the view runs, unless it joined the request's
        transaction (no other request can see it before that commits)."""
        storage = self.policy.storage
        if self.joined is None:
            self.lease = leases.Lease(
                storage,
                self.key,
                self.claim_token,
                length=self.policy.lock_timeout,
                limit=self.policy.lock_limit,
                since=since,
            )
            if storage.renews_leases:  # else it bounds the retries of a settlement only
                self.lease.start()

    def settle(self, operation: Callable[[], T]) -> T:
        """Complete or release the claim with ``operation``, retrying while
        the store fails (:func:`leases.settle`). The caller ends the lease."""
        return leases.settle(self.lease, self.policy.completion_timeout, operation)

    async def asettle(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await leases.asettle(self.lease, self.policy.completion_timeout, operation)

    def end_lease(self) -> None:
        if self.lease is not None:
            self.lease.stop()

    # -- after the view --------------------------------------------------------

    def keeps(self, response: HttpResponseBase) -> bool:
        """Whether the view's response completes the key (else it is released)."""
        return self.policy.store_if(response)

    def stored(self, response: HttpResponseBase) -> StoredResponse:
        policy = self.policy
        return capture(
            response, max_body_size=policy.max_body_size, headers=policy.replayable_headers
        )

    def lease_lost(self) -> HttpResponseBase:
        """Atomic mode: the claim was taken over before the view's commit, so
        its writes were rolled back; the client retries and gets the other
        request's answer."""
        logger.warning(
            "Idempotency claim lost before commit (its lease ran out: the view "
            "outlived max_lock_time, or the store was unreachable for longer than "
            "lock_timeout, and another request took the key over); the view's writes "
            "were rolled back. key=%s",
            self.key.log_id,
        )
        return self.error(KeyInUse(headers={"Retry-After": RETRY_AFTER}))

    def rolled_back(self) -> HttpResponseBase:
        """The view answered a success, but its writes are rolled back; the
        key was released, and the client is told to retry."""
        logger.error(
            "Idempotency: the view answered a success, but its transaction is marked "
            "to be rolled back, so its writes do not commit; the key was released and "
            "the client is told to retry. key=%s",
            self.key.log_id,
        )
        return self.error(TransactionRolledBack(headers={"Retry-After": RETRY_AFTER}))

    def commit_failed(self, exc: StorageError) -> HttpResponseBase:
        """Atomic mode: the transaction did not commit; nothing the view wrote stays."""
        logger.error(
            "Idempotency transaction failed (%s); the view's writes were rolled back. key=%s",
            exc,
            self.key.log_id,
        )
        return self.error(StorageUnavailable(headers={"Retry-After": RETRY_AFTER}))

    def completed(self, stored: bool) -> None:
        if stored:
            self._signal(signals.key_completed, "completed", logging.DEBUG)
        else:
            logger.warning(
                "Idempotency claim lost before completion (its lease ran out: the view "
                "outlived max_lock_time, or the store was unreachable for longer than "
                "lock_timeout, and another request took the key over); the response "
                "was not stored. key=%s",
                self.key.log_id,
            )

    def released(self, reason: str) -> None:
        self._signal(signals.key_released, f"released ({reason})", logging.INFO)

    def finish_failed(self, exc: StorageError, stage: str) -> None:
        logger.error(
            "Idempotency store unavailable at %s (%s), retried until the claim's lease "
            "or completion_timeout ran out; the claim stays until its lease passes. "
            "key=%s",
            stage,
            exc,
            self.key.log_id,
        )

    # -- helpers ---------------------------------------------------------------

    def error(self, error: IdempotencyError) -> HttpResponseBase:
        return render_error(self.request, self.policy, error, self.errors)

    def _signal(self, signal: Any, event: str, level: int) -> None:
        logger.log(level, "Idempotency key %s. key=%s", event, self.key.log_id)
        signal.send(sender=type(self.policy.storage), request=self.request, key=self.key)


def _after(count: int, action: Callable[[], None]) -> Callable[..., None]:
    """A callback that calls ``action`` on its ``count``-th call (each of
    ``count`` conditions calls it once when met); its arguments are ignored."""
    remaining = [count]

    def step(*_: object) -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            action()

    return step


def render_error(
    request: HttpRequest,
    policy: Policy,
    error: IdempotencyError,
    errors: ErrorResponse | None = None,
) -> HttpResponseBase:
    """The response for ``error``: the ``error_response`` option if set, else
    the adapter's own ``errors`` renderer, else problem+json."""
    renderer = policy.error_response or errors or problem_response
    return renderer(request, error)


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

    # -- the stages, for adapters that run the view themselves ------------------
    #
    # ``enter`` before the view, then ``finish`` with its response or ``abort``
    # if it raised. The DRF mixin calls them from DRF's own stages; ``handle``
    # and ``ahandle`` are the whole sequence around a view function.

    def enter(
        self, request: HttpRequest, *, errors: ErrorResponse | None = None
    ) -> Exchange | HttpResponseBase | None:
        """Claim the key of ``request``: an :class:`Exchange` that owns the
        claim (run the view, then :meth:`finish` or :meth:`abort`), a response
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
                self.abort(exchange, "transaction failed to start")
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

    def finish(self, exchange: Exchange, response: HttpResponseBase) -> HttpResponseBase:
        """The view answered ``response``: complete the key with it, or
        release the key if the response does not count as done. Return the
        response to send: the view's, unless its writes do not commit.

        The key completes once the response is rendered (template responses
        are rendered after the view) and once every transaction the view ran
        inside has committed (``ATOMIC_REQUESTS``): never for writes that are
        then rolled back."""
        if exchange.lease is not None:
            exchange.lease.stop_when_closed(response)
        if exchange.transaction is not None:
            try:
                return self._finish_atomic(exchange, exchange.transaction, response)
            except BaseException as exc:  # capturing the response raised
                if exchange.transaction is not None:
                    self.abort(exchange, "completion failed", exc)
                raise
        if not exchange.keeps(response):
            self.abort(exchange, f"status {response.status_code}")
            return response
        open_now = transactions.inside()
        if transactions.rolled_back(open_now):
            return self._finish_rolled_back(exchange, response)
        ready = _after(2, partial(self._complete, exchange, response))
        if not defer_until_rendered(
            response, ready, partial(self.abort, exchange, "rendering failed")
        ):
            ready()
        if not transactions.after_commit(ready, open_now):
            ready()
        return response

    def _finish_rolled_back(
        self, exchange: Exchange, response: HttpResponseBase
    ) -> HttpResponseBase:
        """The view answered, but its writes are rolled back: a transaction
        it ran inside is marked for rollback, or, in atomic mode, its own.

        A success must not reach the client for writes that did not commit:
        the key is released and the client told to retry. An error (such as
        Django REST framework's answer to a validation error) stands for
        "nothing done", and completes the key as usual, apart from the
        rolled-back transaction."""
        if response.status_code < 400:
            self.abort(exchange, "the view's writes were rolled back")
            return exchange.rolled_back()
        if exchange.claim_rolled_back:
            exchange.released("rolled back with the request's transaction")
        elif not defer_until_rendered(
            response,
            partial(self._complete, exchange),
            partial(self.abort, exchange, "rendering failed"),
        ):
            self._complete(exchange, response)
        return response

    @staticmethod
    def answered_exception(exchange: Exchange) -> None:
        """The view raised an exception that the adapter turned into its
        response (DRF's exception handling): in atomic mode, what the view
        wrote is rolled back, as an exception leaving ``atomic()`` would be,
        and the key completes with that response alone."""
        if exchange.transaction is not None:
            exchange.transaction.set_rollback_only()

    def _finish_atomic(
        self, exchange: Exchange, transaction: StoreTransaction, response: HttpResponseBase
    ) -> HttpResponseBase:
        """Complete the key inside the view's transaction, then commit both."""
        if not exchange.keeps(response):
            self.abort(exchange, f"status {response.status_code}")
            return response
        try:
            render_now(response)  # the stored body must be in this transaction
        except BaseException as exc:
            self.abort(exchange, "rendering failed", exc)
            raise
        if transaction.rollback_only:
            # The view's writes are to be undone (it raised an exception its
            # framework answered, see answered_exception(), or marked them so).
            exchange.transaction = None
            transaction.rollback()
            return self._finish_rolled_back(exchange, response)
        try:
            done = exchange.policy.storage.complete(
                exchange.key, exchange.claim_token, exchange.stored(response)
            )
        except StorageError as exc:
            self.abort(exchange, "completion failed")
            return exchange.commit_failed(exc)
        if not done:
            exchange.transaction = None
            exchange.end_lease()
            transaction.rollback()
            return exchange.lease_lost()
        exchange.transaction = None
        try:
            transaction.commit()
        except StorageError as exc:
            self.abort(exchange, "commit failed")
            return exchange.commit_failed(exc)
        exchange.end_lease()
        exchange.completed(True)
        return response

    async def afinish(self, exchange: Exchange, response: HttpResponseBase) -> HttpResponseBase:
        """:meth:`finish` for async views (which have no atomic mode)."""
        if exchange.lease is not None:
            exchange.lease.stop_when_closed(response)
        if not exchange.keeps(response):
            await self.aabort(exchange, f"status {response.status_code}")
        elif not defer_until_rendered(
            response,
            partial(self._complete, exchange),
            partial(self.abort, exchange, "rendering failed"),
        ):
            await self._acomplete(exchange, response)
        return response

    @staticmethod
    def abort(exchange: Exchange, reason: str, raised: BaseException | None = None) -> None:
        """Release the key without a response, so that a retry runs the view;
        in atomic mode, roll back the view's writes first (``raised`` is the
        exception that ended the view, if one did)."""
        storage = exchange.policy.storage
        transaction, exchange.transaction = exchange.transaction, None
        try:
            if transaction is not None:
                with contextlib.suppress(StorageError):
                    # A rollback fails when the connection is gone, and then
                    # the database has rolled the transaction back itself:
                    # the key is released all the same.
                    transaction.rollback(raised)
            if exchange.claim_rolled_back:
                exchange.released(f"{reason}; rolled back with the request's transaction")
                return
            exchange.settle(partial(_independently, storage, storage.release, exchange))
        except StorageError as exc:
            exchange.finish_failed(exc, "release")
        else:
            exchange.released(reason)
        finally:
            exchange.end_lease()

    @staticmethod
    async def aabort(exchange: Exchange, reason: str) -> None:
        """:meth:`abort` for async views."""
        storage = exchange.policy.storage
        try:
            await exchange.asettle(partial(storage.arelease, exchange.key, exchange.claim_token))
        except StorageError as exc:
            exchange.finish_failed(exc, "release")
        else:
            exchange.released(reason)
        finally:
            exchange.end_lease()

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
            self.abort(entered, "exception", exc)
            raise
        return self.finish(entered, response)

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
            await self.aabort(entered, "exception")
            raise
        return await self.afinish(entered, response)

    @staticmethod
    def _complete(exchange: Exchange, response: HttpResponseBase) -> None:
        storage = exchange.policy.storage
        try:
            # Captured first: reading a stream may run the view's own queries,
            # which belong on the request's connection, not the store's.
            stored = exchange.stored(response)
            done = exchange.settle(
                partial(_independently, storage, storage.complete, exchange, stored)
            )
        except StorageError as exc:
            exchange.finish_failed(exc, "completion")
        else:
            exchange.completed(done)
        finally:
            exchange.end_lease()

    @staticmethod
    async def _acomplete(exchange: Exchange, response: HttpResponseBase) -> None:
        storage = exchange.policy.storage
        try:
            stored = exchange.stored(response)
            done = await exchange.asettle(
                partial(storage.acomplete, exchange.key, exchange.claim_token, stored)
            )
        except StorageError as exc:
            exchange.finish_failed(exc, "completion")
        else:
            exchange.completed(done)
        finally:
            exchange.end_lease()


def _independently(
    storage: BaseStorage, operation: Callable[..., bool], exchange: Exchange, *args: Any
) -> bool:
    """``operation`` (a completion or release) of the exchange's claim,
    committed on its own (:meth:`BaseStorage.independent`)."""
    with storage.independent():
        return operation(exchange.key, exchange.claim_token, *args)
