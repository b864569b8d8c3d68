"""One protected request, from its claim to its end.

An :class:`Exchange` is what an adapter gets from
:meth:`Idempotency.enter() <django_idempotency.engine.Idempotency.enter>`
when the request won its key's claim. It owns that claim until the adapter
calls :meth:`Exchange.finish` with the view's response or
:meth:`Exchange.abort` if the view raised (or their async twins
:meth:`~Exchange.afinish` and :meth:`~Exchange.aabort`). Every decision
about the request, before the view and after it, is one of its methods; the
sync and async twins differ only in how they wait for the store.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any, TypeVar

from django.http import HttpRequest, HttpResponseBase

from django_idempotency import leases, signals, transactions
from django_idempotency.errors import (
    IdempotencyError,
    KeyInUse,
    KeyMismatch,
    ResponseNotStored,
    StorageUnavailable,
    TransactionRolledBack,
    problem_response,
    with_retry_hint,
)
from django_idempotency.policy import ErrorResponse, Policy
from django_idempotency.records import Claim, RequestKey, StoredResponse
from django_idempotency.responses import capture, defer_until_rendered, render_now, replay
from django_idempotency.storage.base import StorageError, StoreTransaction

logger = logging.getLogger("django_idempotency")

T = TypeVar("T")

#: How long ``on_conflict="wait"`` sleeps between looks at the first request:
#: from the first delay, doubling up to the longest.
WAIT_FIRST_DELAY = 0.05
WAIT_LONGEST_DELAY = 0.5

#: The request attribute that holds the :class:`Exchange` whose claim the
#: request owns. A protection nested inside another (a decorated view called
#: from a decorated view) then lets the request through instead of answering
#: it as a duplicate of itself.
EXCHANGE_ATTRIBUTE = "idempotency_exchange"


def render_error(
    request: HttpRequest,
    policy: Policy,
    error: IdempotencyError,
    errors: ErrorResponse | None = None,
) -> HttpResponseBase:
    """The response for ``error``: the ``error_response`` option if set, else
    the adapter's own ``errors`` renderer, else problem+json; with the
    error's retry hint, whichever renders it."""
    renderer = policy.error_response or errors or problem_response
    return with_retry_hint(renderer(request, error), error)


class Exchange:
    """One protected request: its key, its claim, and every decision about it.

    Made by :meth:`.Idempotency.enter`. An adapter that got one runs the
    view, then calls :meth:`finish` with its response, or :meth:`abort` if
    it raised; async adapters call :meth:`afinish` and :meth:`aabort`."""

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
        #: claim until :meth:`finish` or :meth:`abort`.
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
            return self.error(KeyInUse(status=status))
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
        return self.error(StorageUnavailable())

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

    # -- after the view: the adapter calls finish() or abort() ------------------

    def finish(self, response: HttpResponseBase) -> HttpResponseBase:
        """The view answered ``response``: complete the key with it, or
        release the key if the response does not count as done. Return the
        response to send: the view's, unless its writes do not commit.

        The key completes once the response is rendered (template responses
        are rendered after the view) and once every transaction the view ran
        inside has committed (``ATOMIC_REQUESTS``): never for writes that are
        then rolled back."""
        if self.lease is not None:
            self.lease.stop_when_closed(response)
        if self.transaction is not None:
            try:
                return self._finish_atomic(self.transaction, response)
            except BaseException as exc:  # capturing the response raised
                if self.transaction is not None:
                    self.abort("completion failed", exc)
                raise
        if not self.keeps(response):
            self.abort(f"status {response.status_code}")
            return response
        open_now = transactions.inside()
        if transactions.rolled_back(open_now):
            return self._finish_rolled_back(response)
        ready = _after(2, partial(self._complete, response))
        if not defer_until_rendered(response, ready, partial(self.abort, "rendering failed")):
            ready()
        if not transactions.after_commit(ready, open_now):
            ready()
        return response

    def _finish_rolled_back(self, response: HttpResponseBase) -> HttpResponseBase:
        """The view answered, but its writes are rolled back: a transaction
        it ran inside is marked for rollback, or, in atomic mode, its own.

        A success must not reach the client for writes that did not commit:
        the key is released and the client told to retry. An error (such as
        Django REST framework's answer to a validation error) stands for
        "nothing done", and completes the key as usual, apart from the
        rolled-back transaction."""
        if response.status_code < 400:
            self.abort("the view's writes were rolled back")
            return self.rolled_back()
        if self.claim_rolled_back:
            self.released("rolled back with the request's transaction")
        elif not defer_until_rendered(
            response,
            self._complete,
            partial(self.abort, "rendering failed"),
        ):
            self._complete(response)
        return response

    def answered_exception(self) -> None:
        """The view raised an exception that the adapter turned into its
        response (DRF's exception handling): in atomic mode, what the view
        wrote is rolled back, as an exception leaving ``atomic()`` would be,
        and the key completes with that response alone."""
        if self.transaction is not None:
            self.transaction.set_rollback_only()

    def _finish_atomic(
        self, transaction: StoreTransaction, response: HttpResponseBase
    ) -> HttpResponseBase:
        """Complete the key inside the view's transaction, then commit both."""
        if not self.keeps(response):
            self.abort(f"status {response.status_code}")
            return response
        try:
            render_now(response)  # the stored body must be in this transaction
        except BaseException as exc:
            self.abort("rendering failed", exc)
            raise
        if transaction.rollback_only:
            # The view's writes are to be undone (it raised an exception its
            # framework answered, see answered_exception(), or marked them so).
            self.transaction = None
            transaction.rollback()
            return self._finish_rolled_back(response)
        try:
            done = self.policy.storage.complete(self.key, self.claim_token, self.stored(response))
        except StorageError as exc:
            self.abort("completion failed")
            return self.commit_failed(exc)
        if not done:
            self.transaction = None
            self.end_lease()
            transaction.rollback()
            return self.lease_lost()
        self.transaction = None
        try:
            transaction.commit()
        except StorageError as exc:
            self.abort("commit failed")
            return self.commit_failed(exc)
        self.end_lease()
        self.completed(True)
        return response

    async def afinish(self, response: HttpResponseBase) -> HttpResponseBase:
        """:meth:`finish` for async views (which have no atomic mode)."""
        if self.lease is not None:
            self.lease.stop_when_closed(response)
        if not self.keeps(response):
            await self.aabort(f"status {response.status_code}")
        elif not defer_until_rendered(
            response,
            self._complete,
            partial(self.abort, "rendering failed"),
        ):
            await self._acomplete(response)
        return response

    def abort(self, reason: str = "exception", raised: BaseException | None = None) -> None:
        """Release the key without a response, so that a retry runs the view;
        in atomic mode, roll back the view's writes first (``raised`` is the
        exception that ended the view, if one did)."""
        transaction, self.transaction = self.transaction, None
        with self._settling("release"):
            if transaction is not None:
                with contextlib.suppress(StorageError):
                    # A rollback fails when the connection is gone, and then
                    # the database has rolled the transaction back itself:
                    # the key is released all the same.
                    transaction.rollback(raised)
            if self.claim_rolled_back:
                reason = f"{reason}; rolled back with the request's transaction"
            else:
                self.settle(partial(self._independently, self.policy.storage.release))
            self.released(reason)

    async def aabort(self, reason: str = "exception") -> None:
        """:meth:`abort` for async views (which have no atomic mode)."""
        with self._settling("release"):
            await self.asettle(partial(self.policy.storage.arelease, self.key, self.claim_token))
            self.released(reason)

    def _complete(self, response: HttpResponseBase) -> None:
        with self._settling("completion"):
            # Captured first: reading a stream may run the view's own queries,
            # which belong on the request's connection, not the store's.
            stored = self.stored(response)
            complete = self.policy.storage.complete
            self.completed(self.settle(partial(self._independently, complete, stored)))

    async def _acomplete(self, response: HttpResponseBase) -> None:
        with self._settling("completion"):
            stored = self.stored(response)
            complete = partial(self.policy.storage.acomplete, self.key, self.claim_token, stored)
            self.completed(await self.asettle(complete))

    @contextlib.contextmanager
    def _settling(self, stage: str) -> Iterator[None]:
        """Around the completion or release of the claim (``stage``): a store
        that stays down is logged, and leaves the claim until its lease
        passes; the lease stops being renewed either way."""
        try:
            yield
        except StorageError as exc:
            self.finish_failed(exc, stage)
        finally:
            self.end_lease()

    # -- what finish() and abort() decide and say --------------------------------

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
        return self.error(KeyInUse())

    def rolled_back(self) -> HttpResponseBase:
        """The view answered a success, but its writes are rolled back; the
        key was released, and the client is told to retry."""
        logger.error(
            "Idempotency: the view answered a success, but its transaction is marked "
            "to be rolled back, so its writes do not commit; the key was released and "
            "the client is told to retry. key=%s",
            self.key.log_id,
        )
        return self.error(TransactionRolledBack())

    def commit_failed(self, exc: StorageError) -> HttpResponseBase:
        """Atomic mode: the transaction did not commit; nothing the view wrote stays."""
        logger.error(
            "Idempotency transaction failed (%s); the view's writes were rolled back. key=%s",
            exc,
            self.key.log_id,
        )
        return self.error(StorageUnavailable())

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

    def _independently(self, operation: Callable[..., bool], *args: Any) -> bool:
        """``operation`` (the store's completion or release) of this claim,
        committed on its own (:meth:`BaseStorage.independent`)."""
        with self.policy.storage.independent():
            return operation(self.key, self.claim_token, *args)

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
