"""Demo endpoints: each creates an order, so a second execution would show."""

from __future__ import annotations

import json
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from demo.models import Order
from django_idempotency.decorators import idempotent


def order_fields(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {"item": str(data.get("item", "coffee"))[:100], "quantity": int(data.get("quantity", 1))}


def created(order: Order) -> JsonResponse:
    response = JsonResponse(
        {"id": order.pk, "item": order.item, "quantity": order.quantity}, status=201
    )
    response["Location"] = f"/orders/{order.pk}/"
    return response


@csrf_exempt
@idempotent
def create_order(request: HttpRequest) -> HttpResponse:
    """POST /orders/: a sync function view with the default options."""
    if request.method != "POST":
        return JsonResponse({"orders": Order.objects.count()})
    return created(Order.objects.create(**order_fields(request)))


@csrf_exempt
@idempotent
async def create_order_async(request: HttpRequest) -> HttpResponse:
    """POST /async/orders/: the same, as an async view."""
    order = await Order.objects.acreate(**order_fields(request))
    return created(order)


@method_decorator(csrf_exempt, name="dispatch")
class OrderView(View):
    """POST /cbv/orders/: a class-based view protected through method_decorator."""

    @method_decorator(idempotent(required=True))
    def post(self, request: HttpRequest) -> HttpResponse:
        return created(Order.objects.create(**order_fields(request)))


@csrf_exempt
@idempotent(on_conflict="wait", wait_timeout=5)
def create_order_slowly(request: HttpRequest) -> HttpResponse:
    """POST /slow/orders/?delay=0.3: sleeps before creating the order, so that
    concurrent duplicates overlap with it."""
    delay = min(float(request.GET.get("delay", "0.3")), 5.0)
    time.sleep(delay)
    return created(Order.objects.create(**order_fields(request)))


@csrf_exempt
@idempotent
def create_order_slowly_conflict(request: HttpRequest) -> HttpResponse:
    """POST /slow/orders/conflict/?delay=0.3: like the above, answering
    duplicates in flight with 409 instead of waiting."""
    delay = min(float(request.GET.get("delay", "0.3")), 5.0)
    time.sleep(delay)
    return created(Order.objects.create(**order_fields(request)))


#: The ttl of /short-lived/orders/, in seconds: short enough to watch a key expire.
SHORT_TTL = 2


@csrf_exempt
@idempotent(ttl=SHORT_TTL, lock_timeout=1)
def create_order_short_lived(request: HttpRequest) -> HttpResponse:
    """POST /short-lived/orders/: keys expire after SHORT_TTL seconds, then the
    same request runs again."""
    return created(Order.objects.create(**order_fields(request)))
