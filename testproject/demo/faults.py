"""Endpoints that kill their own worker at a chosen point, for the crash tests.

Mounted only when ``IDEMPOTENCY_TEST_FAULTS=1`` (the test servers set it), so
the demo never serves them. The first request of a test sends
``X-Crash-At: <point>``; its retries do not, and the header is not part of the
request fingerprint, so they are retries of the same request:

``before-commit``
    right after the order is written: in atomic mode inside the open
    transaction; otherwise the write is committed already.
``after-commit``
    once the order is committed (``transaction.on_commit``): in atomic mode
    that commit also completed the key; otherwise it did not.
``after-response``
    once the response is sent (``request_finished``).

``/faults/open/orders/`` is the same view with ``fail_open=True``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from django.core.signals import request_finished
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from demo.models import Order
from django_idempotency.decorators import idempotent

#: The lease of these endpoints' claims, in seconds: the retries after a crash
#: mid-request wait this long before the key can be taken over.
LOCK_TIMEOUT = 2

_finishing = threading.local()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _die_after_response(**kwargs: Any) -> None:
    if getattr(_finishing, "crash", False):
        _die()


request_finished.connect(_die_after_response)


def create_order(request: HttpRequest) -> HttpResponse:
    """Write an order, then take ``X-Delay`` seconds, and answer with the
    status ``X-Answer-Status`` (201 by default), unless told to crash.
    Headers, unlike the query string, are not part of the request's
    fingerprint: a retry without them is a retry of the same request."""
    point = request.headers.get("X-Crash-At")
    order = Order.objects.create(item=request.GET.get("item", "crash"))
    if point == "before-commit":
        _die()
    if point == "after-commit":
        transaction.on_commit(_die)
    _finishing.crash = point == "after-response"
    time.sleep(min(float(request.headers.get("X-Delay", "0")), 10.0))
    return JsonResponse({"id": order.pk}, status=int(request.headers.get("X-Answer-Status", "201")))


urlpatterns = [
    path(
        "faults/orders/",
        csrf_exempt(idempotent(lock_timeout=LOCK_TIMEOUT)(create_order)),
        name="faults-orders",
    ),
    path(
        "faults/open/orders/",
        csrf_exempt(idempotent(lock_timeout=LOCK_TIMEOUT, fail_open=True)(create_order)),
        name="faults-open-orders",
    ),
    path(
        "faults/atomic/orders/",
        csrf_exempt(idempotent(lock_timeout=LOCK_TIMEOUT, atomic=True)(create_order)),
        name="faults-atomic-orders",
    ),
]
