"""The demo's Django REST framework endpoints (when DRF is installed).

Each creates an order, like the plain views, so a second execution would show:

- ``/api/orders/``: a ``ModelViewSet`` with ``IdempotencyMixin`` (create,
  update, partial update and delete are protected), and a custom action,
  ``POST /api/orders/<pk>/repeat/``, that requires a key;
- ``/api/slow/orders/?delay=0.3``: a view slow enough for concurrent
  duplicates to meet it, answering them ``409``, or waiting for the first
  answer with ``&wait=1`` (an option decided per request);
- ``/api/function/orders/``: a function view, ``@idempotent`` over ``@api_view``.

``/api/`` lists the viewset's routes, and ``/api/schema/`` (with drf-spectacular
installed) is their OpenAPI schema, idempotency header and answers included.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from rest_framework import serializers, status
from rest_framework.decorators import action, api_view
from rest_framework.generics import CreateAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import ModelViewSet

from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.rest_framework import IdempotencyMixin


class OrderSerializer(serializers.ModelSerializer[Order]):
    class Meta:
        model = Order
        fields = ["id", "item", "quantity"]

    def validate_quantity(self, value: int) -> int:
        if value < 1:
            raise serializers.ValidationError("Order at least one.")
        return value


class OrderViewSet(IdempotencyMixin, ModelViewSet[Order]):
    queryset = Order.objects.order_by("pk")
    serializer_class = OrderSerializer

    @action(detail=True, methods=["post"], idempotency_required=True)
    def repeat(self, request: Request, pk: str | None = None) -> Response:
        """Order the same again: a key is required here."""
        order = self.get_object()
        copy = Order.objects.create(item=order.item, quantity=order.quantity)
        return Response(OrderSerializer(copy).data, status=status.HTTP_201_CREATED)


class SlowOrders(IdempotencyMixin, CreateAPIView[Order]):
    serializer_class = OrderSerializer

    def get_idempotency_options(self) -> dict[str, Any]:
        return {"on_conflict": "wait" if self.request.GET.get("wait") else 409}

    def perform_create(self, serializer: serializers.BaseSerializer[Order]) -> None:
        time.sleep(min(float(self.request.GET.get("delay", "0.3")), 5.0))
        serializer.save()


def documented(view: Any) -> Any:
    """The function view's request and answer, for drf-spectacular (where it is
    installed), which cannot guess them from the function."""
    if not settings.HAS_SPECTACULAR:
        return view
    from drf_spectacular.utils import extend_schema

    return extend_schema(request=OrderSerializer, responses={201: OrderSerializer})(view)


@idempotent
@documented
@api_view(["POST"])
def create_order(request: Request) -> Response:
    serializer = OrderSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    serializer.save()
    return Response(serializer.data, status=status.HTTP_201_CREATED)
