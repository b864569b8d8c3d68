"""The storage contract every store implements."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.core.checks import CheckMessage

from django_idempotency.records import Claim, Record, RequestKey, State, StoredResponse

__all__ = [
    "BaseStorage",
    "Claim",
    "PurgeResult",
    "Record",
    "RequestKey",
    "State",
    "StorageError",
    "StoreTransaction",
    "StoredResponse",
    "new_token",
]


class StorageError(Exception):
    """The store cannot be reached or did not answer. Raised from the store's
    own exception, so the engine fails closed (503) or open as configured."""


def new_token() -> str:
    """The token of a new claim, 32 hex digits: unique, not secret.

    A token never leaves the server; it tells this claim from every other
    claim of the same key. So it is a random 64-bit prefix drawn once per
    process (again in a forked child) and a counter: no system call per
    claim, where ``os.urandom`` would release the GIL, and retaking it under
    a threaded server costs more than the call."""
    return f"{_token_prefix}{next(_token_counter):016x}"


def _new_token_prefix() -> None:
    global _token_prefix, _token_counter
    _token_prefix = os.urandom(8).hex()
    _token_counter = itertools.count()


_token_prefix = ""
_token_counter = itertools.count()
_new_token_prefix()
os.register_at_fork(after_in_child=_new_token_prefix)


@dataclass(frozen=True)
class PurgeResult:
    deleted: int
    batches: int


class StoreTransaction:
    """A transaction of the store opened for one request in atomic mode
    (``atomic=True``): the view's own writes and the completion of its key go
    into it, and are committed or rolled back together."""

    @property
    def rollback_only(self) -> bool:
        """Whether something (such as DRF's exception handler) marked the
        transaction to be rolled back: it cannot take the completion."""
        raise NotImplementedError

    def set_rollback_only(self) -> None:
        """Mark the transaction to be rolled back (the view raised an
        exception that its framework answered for it)."""
        raise NotImplementedError

    def commit(self) -> None:
        """Commit the view's writes and the completion; raise
        :class:`StorageError` if the store refuses."""
        raise NotImplementedError

    def rollback(self, exc: BaseException | None = None) -> None:
        """Roll everything back; ``exc`` is the exception that ends the view, if any."""
        raise NotImplementedError


class BaseStorage:
    """Base class of stores. Subclass it to keep keys elsewhere.

    Each method is atomic on the store: two concurrent claims of one key can
    never both succeed, and only the owner of a claim (holder of its token)
    can complete or release it. Times (``ttl``, ``lease``) are seconds and are
    measured by the store's clock, never the caller's.

    The ``a``-prefixed methods are the async versions; by default they run the
    sync ones in a thread. Stores with a native async client override them.

    A store that keeps keys in the request's database implements
    :meth:`independent` and :meth:`joined_transaction`, for views that
    run inside a transaction; one that shares a transaction with the view's
    own writes also sets ``supports_atomic`` and implements :meth:`begin`
    (atomic mode, ``atomic=True``).
    """

    #: Whether :meth:`begin` opens a transaction the view's writes share.
    supports_atomic: bool = False

    def claim(self, key: RequestKey, *, ttl: float, lease: float) -> Claim:
        """Claim ``key`` for ``lease`` seconds, unless a live record exists.

        A record whose ``ttl`` has passed counts as absent. An ``in_progress``
        record whose lease has passed, made with the same fingerprint, is taken
        over. Return the new token, or the existing record.
        """
        raise NotImplementedError

    def complete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        """Store ``response`` and mark the key completed, if ``token`` still owns it.

        Return False when the claim was lost (its lease passed and another
        request took the key over): then nothing is written. Completing again
        with the same token (a retry after a reply lost on the way back) is
        True again and changes nothing.
        """
        raise NotImplementedError

    def renew(self, key: RequestKey, token: str, *, lease: float) -> bool:
        """Extend the claim's lease to ``lease`` seconds from now, if ``token``
        still owns it and it is in progress; return whether it did.

        Called from the process's lease renewer thread while the view runs
        (:mod:`django_idempotency.leases`). A store that does not implement
        it keeps each claim for one lease only: a view that runs longer may
        then run again for a retry (check ``W030``).
        """
        raise NotImplementedError

    @property
    def renews_leases(self) -> bool:
        """Whether this store implements :meth:`renew`."""
        return type(self).renew is not BaseStorage.renew

    def release(self, key: RequestKey, token: str) -> bool:
        """Forget the claim if ``token`` still owns it, so a retry runs again."""
        raise NotImplementedError

    def purge(self, *, batch_size: int, dry_run: bool = False) -> PurgeResult | None:
        """Delete expired records in batches; None if the store expires them itself."""
        return None

    def begin(self) -> StoreTransaction:
        """Open the transaction of an atomic-mode request (after its claim)."""
        raise NotImplementedError(f"{type(self).__name__} has no atomic mode")

    def independent(self) -> AbstractContextManager[None]:
        """A context in which claims, completions and releases commit on their
        own, even inside a transaction the request already has open
        (``ATOMIC_REQUESTS``, a caller's ``atomic()``, atomic mode), and in
        which a failed statement leaves that transaction usable."""
        return nullcontext()

    def joined_transaction(self) -> str | None:
        """The database alias whose transaction, opened around the request,
        a claim made now becomes part of (and is rolled back with), or None
        when claims commit on their own. Only stores that keep keys in the
        request's database can join its transaction."""
        return None

    def check(
        self,
        *,
        atomic: bool = False,
        databases: Sequence[str] | None = None,
        servers_only: bool = False,
        **kwargs: Any,
    ) -> list[CheckMessage]:
        """System check messages about this store.

        ``atomic`` is the ``ATOMIC`` setting. Checks that reach the store's
        servers run only when Django's checks are given ``databases``
        (``check --database``, ``migrate``); with ``servers_only``, they are
        all that runs (the checks of the configuration ran already). Further
        keyword arguments are those of a system check, for future use."""
        return []

    async def aclaim(self, key: RequestKey, *, ttl: float, lease: float) -> Claim:
        return await sync_to_async(self.claim)(key, ttl=ttl, lease=lease)

    async def acomplete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        return await sync_to_async(self.complete)(key, token, response)

    async def arelease(self, key: RequestKey, token: str) -> bool:
        return await sync_to_async(self.release)(key, token)
