"""Leases: claims kept alive while their view runs, and settled through store blips.

A claim is locked for its lease (:setting:`LOCK_TIMEOUT`); once the lease has
passed, a retry of the same request may take the key over, since the worker
that claimed it may be dead. A worker that is alive says so: while its view
runs, the process's one renewer thread extends the lease of each of its live
claims (:meth:`BaseStorage.renew`, fenced by the claim's token) every third
of :setting:`LOCK_TIMEOUT`. So a slow view keeps its key, and only a dead
worker (whose renewer died with it) or a hung view lets its lease pass. A
view keeps its key this way for :setting:`MAX_LOCK_TIME` at most (never
longer than :setting:`TTL`): then renewals stop, and the lease runs out.

When the view is done, its claim is *settled*: completed with its response,
or released. :func:`settle` retries a settlement the store fails, with
backoff, for up to :setting:`COMPLETION_TIMEOUT` and never past the lease
(which the renewer keeps extending when the store comes back meanwhile), so
that a blip of the store does not leave the claim to lapse and run the view
again. Only then does it give up.

Renewals run in one daemon thread per process, for sync and async views
alike, and only for views that run longer than a third of the lease: a
request faster than that costs a set insertion and removal, and nothing on
the store. The thread closes its database connections whenever it has no
lease left to renew.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from django.db import connections
from django.http import HttpResponseBase

from django_idempotency.storage.base import BaseStorage, RequestKey, StorageError

logger = logging.getLogger("django_idempotency")

T = TypeVar("T")

#: A lease is renewed when this share of it has passed since its last renewal.
RENEW_AFTER = 1 / 3

#: After a failed renewal, the renewer tries again this many seconds later
#: (or sooner, when the renewal would be due sooner anyway).
RENEW_RETRY_DELAY = 0.25

#: How long :func:`settle` waits between attempts: from the first delay,
#: doubling up to the longest.
SETTLE_FIRST_DELAY = 0.05
SETTLE_LONGEST_DELAY = 0.5


class Lease:
    """The lease of one claim this process owns, from its claim until it is
    settled (:meth:`stop`).

    Times are this process's monotonic clock, and conservative: the lease is
    taken to start when its claim or renewal was *sent*, so it ends here no
    later than on the store.
    """

    def __init__(
        self,
        storage: BaseStorage,
        key: RequestKey,
        token: str,
        *,
        length: float,
        limit: float,
        since: float,
    ) -> None:
        self.storage = storage
        self.key = key
        self.token = token
        self.length = length
        #: When the lease ends, unless renewed.
        self.ends = since + length
        #: The latest the lease may be renewed to (``MAX_LOCK_TIME`` after the claim).
        self.limit = since + limit
        #: When the renewer renews it next.
        self.due = since + length * RENEW_AFTER
        self.stopped = False

    @property
    def remaining(self) -> float:
        """Seconds until the lease ends, as far as this process knows."""
        return self.ends - time.monotonic()

    def renew(self) -> None:
        """Extend the lease by its length from now, if the claim is still
        this one's and ``MAX_LOCK_TIME`` allows; called by the renewer."""
        sent = time.monotonic()
        if sent + self.length > self.limit:
            logger.warning(
                "Idempotency lease no longer renewed: the view has held its key for "
                "MAX_LOCK_TIME, and the key is free for a retry once its lock_timeout "
                "passes. key=%s",
                self.key.log_id,
            )
            self.stop()
            return
        try:
            kept = self.storage.renew(self.key, self.token, lease=self.length)
        except StorageError as exc:
            logger.info(
                "Idempotency store unavailable at lease renewal (%s); retrying. key=%s",
                exc,
                self.key.log_id,
            )
            self.due = sent + min(RENEW_RETRY_DELAY, self.length * RENEW_AFTER)
            return
        if not kept:  # completed, released or taken over meanwhile: nothing to keep
            self.stop()
            return
        self.ends = sent + self.length
        self.due = sent + self.length * RENEW_AFTER

    def start(self) -> Lease:
        """Have the process's renewer renew the lease until :meth:`stop`
        (unless ``MAX_LOCK_TIME`` leaves nothing a renewal could add)."""
        if self.ends < self.limit:
            _renewer.hold(self)
        return self

    def stop(self) -> None:
        """Renew no more: the claim is settled, or given up."""
        self.stopped = True
        _renewer.drop(self)

    def stop_when_closed(self, response: HttpResponseBase) -> None:
        """Renew no more once the server closes ``response``: by then the
        claim is settled, or it never will be (the transaction the view ran
        in failed to commit), and its lease must be let run out."""
        # HttpResponseBase.close() calls these once the response is sent.
        response._resource_closers.append(self.stop)  # type: ignore[attr-defined]


class Renewer:
    """The thread that renews this process's live leases; started on first use.

    A request's :func:`hold` and :meth:`Lease.stop` wake the thread only
    when they must: when it sleeps with no lease to renew, or until a time
    later than the new lease's first renewal; and when the last lease goes
    while the thread has connections open, to close them."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._leases: set[Lease] = set()
        self._thread: threading.Thread | None = None
        #: When the thread wakes next by itself (None: not before it is woken).
        self._wakes_at: float | None = None
        #: Whether it has renewed since it last closed its connections.
        self._connected = False

    def hold(self, lease: Lease) -> None:
        with self._condition:
            self._leases.add(lease)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="django-idempotency-leases", daemon=True
                )
                self._thread.start()
            if self._wakes_at is None or lease.due < self._wakes_at:
                self._condition.notify()

    def drop(self, lease: Lease) -> None:
        with self._condition:
            self._leases.discard(lease)
            if not self._leases and self._connected:
                self._condition.notify()

    @property
    def leases(self) -> frozenset[Lease]:
        """The leases being renewed now."""
        with self._condition:
            return frozenset(self._leases)

    def _run(self) -> None:
        while True:
            with self._condition:
                if not self._leases:
                    if self._connected:
                        _close_connections()
                        self._connected = False
                    self._wakes_at = None
                    self._condition.wait_for(lambda: bool(self._leases))
                now = time.monotonic()
                due = [lease for lease in self._leases if lease.due <= now]
                if not due:
                    self._wakes_at = min(lease.due for lease in self._leases)
                    self._condition.wait(self._wakes_at - now)
                    continue
                self._wakes_at = now  # renewing: the loop looks at new leases next
                self._connected = True
            for lease in due:
                if not lease.stopped:
                    try:
                        lease.renew()
                    except Exception:  # a store's bug must not end every lease's renewals
                        logger.exception(
                            "Idempotency lease renewal failed; the lease is no longer "
                            "renewed. key=%s",
                            lease.key.log_id,
                        )
                        lease.stop()


def _close_connections() -> None:
    """Close the database connections this thread opened, if any."""
    try:
        connections.close_all()
    except Exception:
        logger.exception("Idempotency lease renewer: closing its database connections failed")


_renewer = Renewer()


def _forget_after_fork() -> None:
    """A forked child has none of its parent's threads, nor its claims."""
    global _renewer
    _renewer = Renewer()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def renewer() -> Renewer:
    """This process's renewer."""
    return _renewer


# -- settling ----------------------------------------------------------------------


def settle(lease: Lease | None, timeout: float, operation: Callable[[], T]) -> T:
    """Run ``operation`` (a completion or a release), retrying it while the
    store fails, for ``timeout`` seconds at most and never past the lease.
    Raise the last :class:`StorageError`. Without a lease (a claim inside
    the request's transaction, which a failure has broken), one attempt."""
    if lease is None:
        return operation()
    deadline = time.monotonic() + timeout
    delay = SETTLE_FIRST_DELAY
    while True:
        try:
            return operation()
        except StorageError:
            wait = min(delay, deadline - time.monotonic(), lease.remaining)
            if wait <= 0:
                raise
        time.sleep(wait)
        delay = min(delay * 2, SETTLE_LONGEST_DELAY)


async def asettle(lease: Lease | None, timeout: float, operation: Callable[[], Awaitable[T]]) -> T:
    """:func:`settle` for async views."""
    if lease is None:
        return await operation()
    deadline = time.monotonic() + timeout
    delay = SETTLE_FIRST_DELAY
    while True:
        try:
            return await operation()
        except StorageError:
            wait = min(delay, deadline - time.monotonic(), lease.remaining)
            if wait <= 0:
                raise
        await asyncio.sleep(wait)
        delay = min(delay * 2, SETTLE_LONGEST_DELAY)
