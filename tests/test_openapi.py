"""The OpenAPI schema drf-spectacular generates for protected DRF views."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("drf_spectacular")

from django.test import override_settings
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView, exception_handler
from rest_framework.viewsets import ModelViewSet

from demo.api import OrderSerializer
from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.rest_framework import IdempotencyMixin


class Orders(IdempotencyMixin, APIView):
    @extend_schema(request=OrderSerializer, responses={201: OrderSerializer})
    def post(self, request: Request) -> Response:
        return Response(status=201)


class Bookings(IdempotencyMixin, APIView):
    idempotency_required = True
    idempotency_header = "X-Idempotency-Key"
    idempotency_key_pattern = r"[A-Za-z0-9_-]{10,255}"
    idempotency_on_conflict = 423

    @extend_schema(request=OrderSerializer, responses={201: OrderSerializer})
    def post(self, request: Request) -> Response:
        return Response(status=201)


class Transactions(IdempotencyMixin, APIView):
    """GPAS: the key is the transaction id in the body."""

    idempotency_key_func = staticmethod(lambda request: request.data.get("externalReference"))

    @extend_schema(request=OrderSerializer, responses={200: OrderSerializer})
    def post(self, request: Request) -> Response:
        return Response()


class Plain(APIView):
    @extend_schema(request=OrderSerializer, responses={201: OrderSerializer})
    def post(self, request: Request) -> Response:
        return Response(status=201)


class OrderViewSet(IdempotencyMixin, ModelViewSet[Order]):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer

    @extend_schema(responses={201: OrderSerializer, 409: OpenApiResponse(description="Ours.")})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)

    @extend_schema(request=None, responses={201: OrderSerializer})
    @action(detail=True, methods=["post"], idempotency_required=True)
    def repeat(self, request: Request, pk: str | None = None) -> Response:
        return Response(status=201)


@idempotent(required=True)
@api_view(["POST"])
def pay(request: Request) -> Response:
    return Response(status=201)


def schema_of(*patterns: URLPattern | URLResolver) -> dict[str, Any]:
    generated: dict[str, Any] = SchemaGenerator(patterns=list(patterns)).get_schema(
        request=None, public=True
    )
    return generated


def key_parameters(operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in operation.get("parameters", []) if p["in"] == "header"]


def test_protected_operation_has_the_header_and_the_answers() -> None:
    operation = schema_of(path("orders/", Orders.as_view()))["paths"]["/orders/"]["post"]

    (header,) = key_parameters(operation)
    assert header["name"] == "Idempotency-Key"
    assert header["required"] is False
    assert header["schema"] == {"type": "string", "minLength": 1, "maxLength": 255}
    responses = operation["responses"]
    assert set(responses) == {"201", "400", "409", "422", "503"}
    problem = {"$ref": "#/components/schemas/IdempotencyProblem"}
    for status in ("400", "409", "422", "503"):
        assert responses[status]["content"] == {"application/problem+json": {"schema": problem}}
    assert "idempotency_key_in_use" in responses["409"]["description"]


def test_problem_component_is_defined_once() -> None:
    schema = schema_of(path("orders/", Orders.as_view()), path("pay/", pay))
    component = schema["components"]["schemas"]["IdempotencyProblem"]
    assert component["required"] == ["type", "title", "status", "detail", "code"]


def test_options_shape_the_parameter_and_the_answers() -> None:
    operation = schema_of(path("bookings/", Bookings.as_view()))["paths"]["/bookings/"]["post"]

    (header,) = key_parameters(operation)
    assert header["name"] == "X-Idempotency-Key"
    assert header["required"] is True
    assert header["schema"]["pattern"] == r"[A-Za-z0-9_-]{10,255}"
    assert "423" in operation["responses"]
    assert "409" not in operation["responses"]


def test_key_in_the_body_has_no_header_but_the_answers() -> None:
    paths = schema_of(path("transactions/", Transactions.as_view()))["paths"]
    operation = paths["/transactions/"]["post"]
    assert key_parameters(operation) == []
    assert {"400", "409", "422"} <= set(operation["responses"])


def test_views_without_protection_are_left_alone() -> None:
    operation = schema_of(path("plain/", Plain.as_view()))["paths"]["/plain/"]["post"]
    assert key_parameters(operation) == []
    assert set(operation["responses"]) == {"201"}


def test_viewset_writes_are_protected_and_reads_are_not() -> None:
    router = SimpleRouter()
    router.register("orders", OrderViewSet, basename="order")
    paths = schema_of(path("", include(router.urls)))["paths"]

    for method in ("post",):
        assert key_parameters(paths["/orders/"][method])
    for method in ("put", "patch", "delete"):
        assert key_parameters(paths["/orders/{id}/"][method]), method
    assert not key_parameters(paths["/orders/"]["get"])
    assert not key_parameters(paths["/orders/{id}/"]["get"])
    assert "409" not in paths["/orders/"]["get"]["responses"]


def test_action_options_and_the_views_own_responses_are_kept() -> None:
    router = SimpleRouter()
    router.register("orders", OrderViewSet, basename="order")
    paths = schema_of(path("", include(router.urls)))["paths"]

    (repeat_header,) = key_parameters(paths["/orders/{id}/repeat/"]["post"])
    assert repeat_header["required"] is True
    create = paths["/orders/"]["post"]
    assert key_parameters(create)[0]["required"] is False
    assert create["responses"]["409"] == {"description": "Ours."}
    assert "422" in create["responses"]


def test_idempotent_above_api_view() -> None:
    operation = schema_of(path("pay/", pay))["paths"]["/pay/"]["post"]
    (header,) = key_parameters(operation)
    assert header["required"] is True


def envelope_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    return exception_handler(exc, context)


def test_with_the_projects_exception_handler_the_body_is_not_promised() -> None:
    handler = f"{__name__}.envelope_handler"
    with override_settings(
        REST_FRAMEWORK={
            "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
            "EXCEPTION_HANDLER": handler,
        }
    ):
        operation = schema_of(path("orders/", Orders.as_view()))["paths"]["/orders/"]["post"]
    assert "content" not in operation["responses"]["422"]
    assert operation["responses"]["422"]["description"]


def test_other_schema_classes_are_left_alone() -> None:
    from rest_framework.schemas.openapi import AutoSchema as DRFAutoSchema

    with override_settings(REST_FRAMEWORK={"DEFAULT_SCHEMA_CLASS": DRFAutoSchema}):
        assert type(Orders().schema) is DRFAutoSchema


@pytest.mark.django_db
def test_demo_schema_endpoint(client: Any) -> None:
    response = client.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert response.status_code == 200
    operation = response.json()["paths"]["/api/orders/"]["post"]
    assert [p["name"] for p in key_parameters(operation)] == ["Idempotency-Key"]
