"""Idempotency keys for the calls a protected view makes to other services.

Atomic mode commits the view's own database writes with its key; a payment
provider or another API called from the view is outside that transaction. Give
each such call an idempotency key of its own that is the same on every retry
of the request, so that the other service, too, does its work once.
"""

from __future__ import annotations

import hashlib

from django.http import HttpRequest

from django_idempotency.exchange import EXCHANGE_ATTRIBUTE, Exchange


def downstream_key(request: HttpRequest, purpose: str) -> str:
    """A key for one call the view makes to another service: the same on every
    retry of this request, different for each ``purpose`` (``"charge"``,
    ``"refund"``) and for every client's key.

    It is the SHA-256, in hex (64 characters, within every provider's limit),
    of the request's record digest (scope and key) and ``purpose``, so the
    client's own key is not passed on. Raise ``LookupError`` when the request
    does not own a claim (no key, a method that is not protected, or a store
    that was down with ``fail_open``): there is then nothing to derive from.
    """
    exchange = getattr(request, EXCHANGE_ATTRIBUTE, None)
    if not isinstance(exchange, Exchange):
        raise LookupError(
            "downstream_key() needs a request that holds an idempotency claim: "
            "call it from a protected view, for a request that sent a key."
        )
    material = f"{exchange.key.digest}:{purpose}".encode()
    return hashlib.sha256(material).hexdigest()
