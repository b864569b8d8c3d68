"""JSON-RPC endpoints of the demo (``POST /rpc/``, ``POST /async/rpc/``),
protected through the adapter in ``demo.rpc_idempotency``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from demo.models import Order
from demo.rpc import Dispatcher
from demo.rpc_idempotency import Idempotent

rpc = Dispatcher()


def _fields(item: Any, quantity: Any) -> dict[str, Any]:
    return {"item": str(item)[:100], "quantity": int(quantity)}


def _created(order: Order) -> dict[str, Any]:
    return {"id": order.pk, "item": order.item, "quantity": order.quantity}


@rpc.method("orders.create", around=Idempotent(required=True))
def create_order(request: HttpRequest, item: Any = "coffee", quantity: Any = 1) -> dict[str, Any]:
    """Create an order: a key is required, and a retry gets the same order."""
    return _created(Order.objects.create(**_fields(item, quantity)))


@rpc.method("orders.create_async", around=Idempotent(required=True))
async def create_order_async(
    request: HttpRequest, item: Any = "coffee", quantity: Any = 1
) -> dict[str, Any]:
    return _created(await Order.objects.acreate(**_fields(item, quantity)))


@rpc.method("orders.create_failing", around=Idempotent())
def create_order_failing(request: HttpRequest, item: Any = "coffee") -> dict[str, Any]:
    """Create an order, then fail: its key is released, and a retry runs again."""
    Order.objects.create(**_fields(item, 1))
    raise RuntimeError("the method failed after writing")


@rpc.method("orders.count")
def count_orders(request: HttpRequest) -> int:
    """Not protected: no key is read."""
    return Order.objects.count()
