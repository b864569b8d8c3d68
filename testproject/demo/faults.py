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

``/faults/chaos/orders/`` and ``/faults/chaos/atomic/orders/`` serve the chaos
test (``tests/test_chaos.py``): each run of the view records itself as an
:class:`~demo.models.Execution` (written as it starts, finished just before it
returns, answered once the protection has stored its answer), lasts
``X-Delay`` seconds, and answers with the execution's id. Their lease
(:data:`CHAOS_LOCK_TIMEOUT`) is shorter than the longest delay, and their
records expire soon (:data:`CHAOS_TTL`), so that purges find some to delete.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.signals import request_finished
from django.db import InterfaceError, OperationalError, router, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from demo.models import Execution, Order
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyKey

#: The lease of these endpoints' claims, in seconds: the retries after a crash
#: mid-request wait this long before the key can be taken over.
LOCK_TIMEOUT = 2

#: The chaos endpoints' lease and retention, in seconds.
CHAOS_LOCK_TIMEOUT = 4
CHAOS_TTL = 20

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


def _store_alias() -> str:
    """The database the keys are stored in, found as the database store finds
    it: the ``DATABASE`` storage option, else the routers. Atomic mode refuses
    writes to any other alias while the view runs."""
    options = getattr(settings, "IDEMPOTENCY", {}).get("STORAGE_OPTIONS", {})
    return str(options.get("DATABASE") or router.db_for_write(IdempotencyKey))


def _chaos_order(request: HttpRequest, using: str) -> HttpResponse:
    """Record this run in ``using``, take ``X-Delay`` seconds, and answer
    with the run's id. The view's own database unreachable (atomic mode keeps
    it behind the store's proxy) is answered 503, as a view behind a failing
    database would be, not with Django's 500."""
    try:
        execution = Execution.objects.using(using).create(
            key=request.headers.get("Idempotency-Key", ""),
            pid=os.getpid(),
            started_at=timezone.now(),
        )
        time.sleep(min(float(request.headers.get("X-Delay", "0")), 10.0))
        execution.finished_at = timezone.now()
        execution.save(using=using, update_fields=["finished_at"])
    except (OperationalError, InterfaceError):
        response = JsonResponse({"code": "database_unavailable"}, status=503)
        response["Retry-After"] = "1"
        return response
    request.chaos_execution = execution.pk  # type: ignore[attr-defined]
    return JsonResponse({"execution": execution.pk}, status=201)


def _record_answer(view: Callable[[HttpRequest], HttpResponse]) -> Callable[..., HttpResponse]:
    """Around the protected view: once the protection has returned, the key
    is completed (or its completion failed), and the answer goes out. Written
    through ``default``, which the test never cuts off; in atomic mode, the
    run's row is committed by then, or rolled back and not there."""

    @wraps(view)
    def wrapper(request: HttpRequest) -> HttpResponse:
        response = view(request)
        execution = getattr(request, "chaos_execution", None)
        if execution is not None:
            Execution.objects.filter(pk=execution).update(answered_at=timezone.now())
        return response

    return wrapper


def chaos_order(request: HttpRequest) -> HttpResponse:
    """Default mode: the run is written to ``default``, which stays up while
    the store is cut off."""
    return _chaos_order(request, "default")


def chaos_order_atomic(request: HttpRequest) -> HttpResponse:
    """Atomic mode: the run is written to the store's database, in the
    transaction that completes the key, so only a completed run stays."""
    return _chaos_order(request, _store_alias())


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
    path(
        "faults/chaos/orders/",
        csrf_exempt(
            _record_answer(idempotent(lock_timeout=CHAOS_LOCK_TIMEOUT, ttl=CHAOS_TTL)(chaos_order))
        ),
        name="faults-chaos-orders",
    ),
    path(
        "faults/chaos/atomic/orders/",
        csrf_exempt(
            _record_answer(
                idempotent(lock_timeout=CHAOS_LOCK_TIMEOUT, ttl=CHAOS_TTL, atomic=True)(
                    chaos_order_atomic
                )
            )
        ),
        name="faults-chaos-atomic-orders",
    ),
]
