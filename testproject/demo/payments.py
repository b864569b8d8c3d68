"""The demo's Stripe-style payments API, for clients such as Stripe's SDKs.

``POST /payments/v1/charges`` takes Stripe's form-encoded parameters
(``amount``, ``currency``, ``description``) and answers a charge as Stripe
represents one. Point a Stripe SDK at it with
``StripeClient(api_key, base_addresses={"api": "http://host/payments"})``.

It answers with Stripe's errors (``error_response=stripe_response``): a key
reused with other parameters is a 400 ``idempotency_error``, which the SDKs
raise as their ``IdempotencyError``, and ``Stripe-Should-Retry`` tells them
which answers to retry. Keys belong to one API key (the bearer token,
hashed) and one endpoint. A request still in flight is waited for, up to
2 s, below the SDKs' retry window (see the how-to on retrying clients).

``metadata[delay]`` (seconds, at most 10) makes the charge slow, for the
tests and measurements of overlapping retries.
"""

from __future__ import annotations

import hashlib
import time

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from demo.models import Charge
from django_idempotency.decorators import idempotent
from django_idempotency.errors import stripe_response
from django_idempotency.scope import endpoint

#: The longest ``metadata[delay]`` honoured.
MAX_DELAY = 10.0


def api_key_scope(request: HttpRequest) -> str:
    """One scope per API key and endpoint; the key is hashed, never stored."""
    api_key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    return f"api-key:{hashlib.sha256(api_key.encode()).hexdigest()}|{endpoint(request)}"


def invalid(message: str, param: str) -> JsonResponse:
    """Stripe's answer to a bad parameter."""
    error = {"type": "invalid_request_error", "message": message, "param": param}
    return JsonResponse({"error": error}, status=400)


def create_charge(request: HttpRequest) -> JsonResponse:
    """Create the charge the POSTed parameters describe (unprotected: the
    protection is below, and the tests protect it in other ways too)."""
    amount = request.POST.get("amount", "")
    if not amount.isdigit():
        return invalid(
            "amount must be a positive integer, in the currency's smallest unit", "amount"
        )
    try:
        delay = min(float(request.POST.get("metadata[delay]", 0)), MAX_DELAY)
    except ValueError:
        return invalid("metadata[delay] must be a number of seconds", "metadata[delay]")
    if delay > 0:
        time.sleep(delay)
    charge = Charge.objects.create(
        amount=int(amount),
        currency=request.POST.get("currency", "usd")[:3].lower(),
        description=request.POST.get("description", "")[:200],
    )
    return JsonResponse(charge.as_stripe())


charges = csrf_exempt(
    require_POST(
        idempotent(
            create_charge,
            error_response=stripe_response,
            scope_func=api_key_scope,
            on_conflict="wait",
            wait_timeout=2,
        )
    )
)
