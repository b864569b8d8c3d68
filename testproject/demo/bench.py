"""Endpoints the benchmarks compare: one view, plain and protected.

Mounted only when ``IDEMPOTENCY_BENCH=1`` (``benchmarks/run.py`` sets it).
Every variant runs the same work: it writes an order and answers a JSON
document of about 1 KB, like an API returning the resource it created.
``/bench/atomic/`` is the database store in atomic mode.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.views.decorators.csrf import csrf_exempt

from demo.models import Order
from django_idempotency.decorators import idempotent

#: The answer's padding: the document is about 1 KB.
NOTE = "x" * 900


def _document(order: Order) -> dict[str, Any]:
    return {"id": order.pk, "item": order.item, "quantity": order.quantity, "note": NOTE}


def _create(request: HttpRequest) -> Order:
    data = json.loads(request.body or b"{}")
    return Order.objects.create(item=str(data.get("item", "bench"))[:100], quantity=1)


def create(request: HttpRequest) -> HttpResponse:
    order = _create(request)
    return HttpResponse(json.dumps(_document(order)), status=201, content_type="application/json")


def _redis_storage() -> Any:
    from django_idempotency.storage import RedisStorage

    return RedisStorage(cache_alias="idempotency", key_prefix="bench")


urlpatterns: list[URLPattern] = [
    path("bench/plain/", csrf_exempt(create)),
    path("bench/database/", csrf_exempt(idempotent(create))),
    path("bench/atomic/", csrf_exempt(idempotent(atomic=True)(create))),
]
if settings.HAS_REDIS:
    protected = idempotent(storage=_redis_storage())(create)
    urlpatterns.append(path("bench/redis/", csrf_exempt(protected)))

if settings.HAS_DRF:
    from rest_framework.request import Request
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from django_idempotency.rest_framework import IdempotencyMixin

    class Plain(APIView):
        authentication_classes: list[Any] = []

        def post(self, request: Request) -> Response:
            return Response(_document(_create(request)), status=201)

    class Protected(IdempotencyMixin, Plain):
        pass

    urlpatterns += [
        path("bench/drf/plain/", Plain.as_view()),
        path("bench/drf/database/", Protected.as_view()),
    ]
    if settings.HAS_REDIS:
        urlpatterns.append(
            path("bench/drf/redis/", Protected.as_view(idempotency_storage=_redis_storage()))
        )
