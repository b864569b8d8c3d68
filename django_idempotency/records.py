"""The values a protected request and its store hand each other.

A :class:`RequestKey` names a request to the store; a :class:`Claim` is the
store's answer to claiming it, holding the :class:`Record` it ran into, if
any; a :class:`StoredResponse` is what a record keeps of the first answer.
They are plain frozen dataclasses, and this module imports nothing of the
package: stores, the engine and adapters all build on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

#: The state of a record: claimed by a request that is still running, or
#: completed with that request's response.
State = Literal["in_progress", "completed"]


@dataclass(frozen=True)
class StoredResponse:
    """A response as stored: status, body and the headers that describe it.

    ``replayable`` is False when the body could not be kept whole (larger
    than ``max_body_size``, or a stream of unknown length): then only its
    status is kept, and duplicates are told that the first request was
    processed but cannot be replayed.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    replayable: bool = True


@dataclass(frozen=True)
class RequestKey:
    """One idempotency key as the stores see it.

    ``scope`` and ``key`` identify the record; ``fingerprint`` identifies the
    request made with it. Stores look records up by ``digest``, a SHA-256 of
    scope and key, so that neither length nor content of either matters.
    """

    scope: str
    key: str
    fingerprint: str

    @cached_property
    def digest(self) -> str:
        scope = self.scope.encode()
        return hashlib.sha256(b"%d:%s%s" % (len(scope), scope, self.key.encode())).hexdigest()

    @property
    def log_id(self) -> str:
        """What logs and signals show instead of the key: a prefix of the digest."""
        return self.digest[:16]


@dataclass(frozen=True)
class Record:
    """An existing record that a claim ran into."""

    state: State
    fingerprint: str
    response: StoredResponse | None = None


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`~django_idempotency.storage.BaseStorage.claim`.

    Either ``token`` is set (this request owns the key and must complete or
    release it with that token) or ``record`` is (another request has it).
    """

    token: str | None = None
    record: Record | None = None

    @property
    def claimed(self) -> bool:
        return self.token is not None
