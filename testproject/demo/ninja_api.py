"""The demo's Django Ninja endpoints (when django-ninja is installed), at
``/ninja/``; each creates an order, like the other demo endpoints:

- ``POST /ninja/orders``: ``@idempotent`` above the operation;
- ``POST /ninja/async/orders``: an async operation, ``@idempotent`` below;
- ``POST /ninja/private/orders``: behind a bearer token (``demo-token``),
  claimed once Ninja has authenticated it.

``/ninja/docs`` shows the OpenAPI schema, idempotency header and answers
included.
"""

from __future__ import annotations

from typing import Any

from ninja import NinjaAPI, Schema
from ninja.responses import Status
from ninja.security import HttpBearer

from demo.models import Order
from django_idempotency.decorators import idempotent

api = NinjaAPI(urls_namespace="ninja", title="Demo orders (Django Ninja)")


class OrderIn(Schema):
    item: str
    quantity: int = 1


class OrderOut(Schema):
    id: int
    item: str
    quantity: int


class DemoToken(HttpBearer):
    def authenticate(self, request: Any, token: str) -> str | None:
        return token if token == "demo-token" else None


@idempotent
@api.post("/orders", response={201: OrderOut})
def create_order(request: Any, payload: OrderIn) -> Status:
    return Status(201, Order.objects.create(**payload.dict()))


@api.post("/async/orders", response={201: OrderOut})
@idempotent
async def create_order_async(request: Any, payload: OrderIn) -> Status:
    return Status(201, await Order.objects.acreate(**payload.dict()))


@idempotent(required=True)
@api.post("/private/orders", response={201: OrderOut}, auth=DemoToken())
def create_private_order(request: Any, payload: OrderIn) -> Status:
    return Status(201, Order.objects.create(**payload.dict()))
