"""The OpenAPI schema drf-spectacular generates for protected DRF views."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("drf_spectacular")

from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import URLPattern, URLResolver, include, path
from django.utils.decorators import method_decorator
from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.decorators import action, api_view, schema
from rest_framework.generics import CreateAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView, exception_handler
from rest_framework.viewsets import ModelViewSet

from demo.api import OrderSerializer
from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.errors import (
    IdempotencyError,
    KeyInUse,
    KeyInvalid,
    KeyMismatch,
    KeyMissing,
    ResponseNotStored,
    StorageUnavailable,
    TransactionRolledBack,
)
from django_idempotency.rest_framework import IdempotencyMixin

PROBLEM = {
    "application/problem+json": {"schema": {"$ref": "#/components/schemas/IdempotencyProblem"}}
}
CREATED = {201: OrderSerializer}


class Orders(IdempotencyMixin, APIView):
    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)

    @extend_schema(responses={200: OrderSerializer})
    def get(self, request: Request) -> Response:
        return Response()


class Bookings(IdempotencyMixin, CreateAPIView[Order]):
    """Not a decorated method: the view's own schema documents it."""

    serializer_class = OrderSerializer
    idempotency_required = True
    idempotency_header = "X-Idempotency-Key"
    idempotency_key_pattern = r"[A-Za-z0-9_-]{10,255}"
    idempotency_on_conflict = 423


class Transactions(IdempotencyMixin, APIView):
    """GPAS: the key is the transaction id in the body."""

    idempotency_key_func = staticmethod(lambda request: request.data.get("externalReference"))

    @extend_schema(request=OrderSerializer, responses={200: OrderSerializer})
    def post(self, request: Request) -> Response:
        return Response()


class Lenient(IdempotencyMixin, APIView):
    idempotency_on_conflict = "wait"
    idempotency_wait_timeout = 5
    idempotency_fail_open = True

    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)


def plain_text_error(request: HttpRequest, error: IdempotencyError) -> HttpResponse:
    return HttpResponse(error.detail, status=error.status, content_type="text/plain")


class PlainTextErrors(IdempotencyMixin, APIView):
    idempotency_error_response = staticmethod(plain_text_error)

    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)


class StripeAnswers(IdempotencyMixin, APIView):
    idempotency_error_response = "django_idempotency.errors.stripe_response"

    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)


class Negotiated(IdempotencyMixin, APIView):
    def get_idempotency_options(self) -> dict[str, Any]:
        return {"required": self.request.method == "POST"}

    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)


class Fragile(IdempotencyMixin, APIView):
    """Per-request options that read the body, which the schema's request has not."""

    idempotency_required = True

    def get_idempotency_options(self) -> dict[str, Any]:
        return {"header": str(self.request.data["header"])}

    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)


class Plain(APIView):
    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)


class Refunds(APIView):
    """``@idempotent`` on one method, through ``method_decorator``."""

    @method_decorator(idempotent(required=True))
    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)

    @extend_schema(request=OrderSerializer, responses={200: OrderSerializer})
    def put(self, request: Request) -> Response:
        return Response()


class OrderViewSet(IdempotencyMixin, ModelViewSet[Order]):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer

    @extend_schema(
        responses={201: OrderSerializer, 409: OpenApiResponse(description="Ours.")},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key", location=OpenApiParameter.HEADER, description="Our key."
            )
        ],
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)

    @extend_schema(request=None, responses=CREATED)
    @action(detail=True, methods=["post"], idempotency_required=True, idempotency_ttl=600)
    def repeat(self, request: Request, pk: str | None = None) -> Response:
        return Response(status=201)


@extend_schema(request=OrderSerializer, responses=CREATED)
@idempotent(required=True)
@api_view(["POST"])
def pay(request: Request) -> Response:
    return Response(status=201)


@extend_schema(request=OrderSerializer, responses=CREATED)
@api_view(["POST"])
@idempotent(header="X-Payment-Key")
def pay_later(request: Request) -> Response:
    return Response(status=201)


class Legacy(IdempotencyMixin, APIView):
    def post(self, request: Request) -> Response:
        return Response(status=201)


class LegacyDocumented(OpenApiViewExtension):
    """A project's own view extension, for a view it cannot decorate."""

    target_class = Legacy

    def view_replacement(self) -> type[APIView]:
        class Documented(Legacy):
            @extend_schema(request=OrderSerializer, responses=CREATED)
            def post(self, request: Request) -> Response:
                return Response(status=201)

        return Documented


def our_extensions() -> list[type[OpenApiViewExtension]]:
    # Registered by the app's ready(): this module does not import it.
    return [
        extension
        for extension in OpenApiViewExtension._registry
        if extension.__module__ == "django_idempotency.rest_framework.schema"
    ]


def test_the_app_registers_the_extension() -> None:
    assert len(our_extensions()) == 1


def schema_of(*patterns: URLPattern | URLResolver) -> dict[str, Any]:
    generated: dict[str, Any] = SchemaGenerator(patterns=list(patterns)).get_schema(
        request=None, public=True
    )
    return generated


def operation(view: Any, method: str = "post") -> dict[str, Any]:
    operation: dict[str, Any] = schema_of(path("endpoint/", view))["paths"]["/endpoint/"][method]
    return operation


def headers(operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in operation.get("parameters", []) if p["in"] == "header"]


def orders_paths() -> dict[str, Any]:
    router = SimpleRouter()
    router.register("orders", OrderViewSet, basename="order")
    paths: dict[str, Any] = schema_of(path("", include(router.urls)))["paths"]
    return paths


def test_a_protected_operation_has_the_header_and_the_answers() -> None:
    post = operation(Orders.as_view())

    (header,) = headers(post)
    description = header.pop("description")
    assert header == {
        "in": "header",
        "name": "Idempotency-Key",
        "schema": {"type": "string", "maxLength": 255, "minLength": 1},
    }
    assert "Idempotent-Replayed: true" in description
    assert "24 hours" in description
    responses = post["responses"]
    assert list(responses) == ["201", "400", "409", "422", "503"]
    assert responses["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Order"
    }
    for status in ("400", "409", "422", "503"):
        assert responses[status]["content"] == PROBLEM
    assert "idempotency_key_missing" not in responses["400"]["description"]
    assert "idempotency_key_invalid" in responses["400"]["description"]
    assert "idempotency_key_in_use" in responses["409"]["description"]
    assert "idempotency_response_not_stored" in responses["409"]["description"]
    assert "idempotency_key_mismatch" in responses["422"]["description"]
    assert set(responses["409"]["headers"]) == {"Retry-After"}
    assert set(responses["503"]["headers"]) == {"Retry-After"}
    assert "headers" not in responses["422"]


def test_the_problem_schema_describes_every_error_once() -> None:
    schema = schema_of(path("orders/", Orders.as_view()), path("pay/", pay))
    problem = schema["components"]["schemas"]["IdempotencyProblem"]
    codes = schema["components"]["schemas"]["IdempotencyErrorCode"]["enum"]
    assert problem["properties"]["code"] == {"$ref": "#/components/schemas/IdempotencyErrorCode"}

    every_error = (
        KeyMissing(),
        KeyInvalid(),
        KeyInUse(status=423),
        KeyMismatch(),
        ResponseNotStored(original_status=201),
        StorageUnavailable(),
        TransactionRolledBack(),
    )
    for error in every_error:
        document = error.as_problem()
        assert set(problem["required"]) <= set(document) <= set(problem["properties"])
        assert document["code"] in codes
    assert len(codes) == len(every_error)


def test_the_views_options_shape_the_parameter_and_the_answers() -> None:
    post = operation(Bookings.as_view())

    (header,) = headers(post)
    assert header["name"] == "X-Idempotency-Key"
    assert header["required"] is True
    assert header["schema"] == {
        "type": "string",
        "maxLength": 255,
        "pattern": "^(?:[A-Za-z0-9_-]{10,255})$",
    }
    responses = post["responses"]
    assert "idempotency_key_missing" in responses["400"]["description"]
    assert "idempotency_key_in_use" in responses["423"]["description"]
    assert responses["423"]["content"] == PROBLEM
    assert set(responses["423"]["headers"]) == {"Retry-After"}
    assert "headers" not in responses["409"]
    assert "idempotency_key_in_use" not in responses["409"]["description"]
    assert "idempotency_response_not_stored" in responses["409"]["description"]
    assert responses["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Order"
    }


def test_waiting_without_503_when_failing_open() -> None:
    responses = operation(Lenient.as_view())["responses"]
    assert list(responses) == ["201", "400", "409", "422"]
    assert "waiting 5 seconds" in responses["409"]["description"]


def test_a_key_from_the_body_has_no_header_but_the_answers() -> None:
    post = operation(Transactions.as_view())
    assert headers(post) == []
    assert list(post["responses"]) == ["200", "400", "409", "422", "503"]


def test_views_and_methods_without_protection_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patterns = [
        path("plain/", Plain.as_view()),
        path("orders/", Orders.as_view()),
        path("refunds/", Refunds.as_view()),
    ]
    schema = schema_of(*patterns)
    without = [e for e in OpenApiViewExtension._registry if e not in our_extensions()]
    monkeypatch.setattr(OpenApiViewExtension, "_registry", without)
    unextended = schema_of(*patterns)

    assert schema["paths"]["/plain/"] == unextended["paths"]["/plain/"]
    assert schema["paths"]["/refunds/"]["put"] == unextended["paths"]["/refunds/"]["put"]
    assert schema["paths"]["/refunds/"]["post"] != unextended["paths"]["/refunds/"]["post"]
    assert headers(schema["paths"]["/plain/"]["post"]) == []
    assert list(schema["paths"]["/plain/"]["post"]["responses"]) == ["201"]
    orders_get = schema["paths"]["/orders/"]["get"]
    assert headers(orders_get) == []
    assert list(orders_get["responses"]) == ["200"]


def test_viewset_writes_are_protected_and_reads_are_not() -> None:
    paths = orders_paths()

    for route, method in [
        ("/orders/", "post"),
        ("/orders/{id}/", "put"),
        ("/orders/{id}/", "patch"),
        ("/orders/{id}/", "delete"),
    ]:
        assert [h["name"] for h in headers(paths[route][method])] == ["Idempotency-Key"], method
        assert "422" in paths[route][method]["responses"], method
    for route in ("/orders/", "/orders/{id}/"):
        assert headers(paths[route]["get"]) == []
        assert set(paths[route]["get"]["responses"]) == {"200"}
    assert "204" in paths["/orders/{id}/"]["delete"]["responses"]


def test_an_actions_own_options() -> None:
    repeat = orders_paths()["/orders/{id}/repeat/"]["post"]
    (header,) = headers(repeat)
    assert header["required"] is True
    assert "10 minutes" in header["description"]
    assert "idempotency_key_missing" in repeat["responses"]["400"]["description"]


def test_what_the_view_documents_itself_is_kept() -> None:
    create = orders_paths()["/orders/"]["post"]

    assert headers(create) == [
        {
            "in": "header",
            "name": "Idempotency-Key",
            "schema": {"type": "string"},
            "description": "Our key.",
        }
    ]
    assert create["responses"]["409"] == {"description": "Ours."}
    assert create["responses"]["422"]["content"] == PROBLEM


def test_idempotent_above_api_view() -> None:
    post = operation(pay)
    (header,) = headers(post)
    assert (header["name"], header["required"]) == ("Idempotency-Key", True)
    assert post["responses"]["422"]["content"] == PROBLEM


def test_idempotent_below_api_view() -> None:
    post = operation(pay_later)
    (header,) = headers(post)
    assert (header["name"], header.get("required", False)) == ("X-Payment-Key", False)
    assert post["responses"]["422"]["content"] == PROBLEM
    assert "201" in post["responses"]


def test_idempotent_on_one_method_of_an_api_view() -> None:
    schema = schema_of(path("refunds/", Refunds.as_view()))
    post, put = schema["paths"]["/refunds/"]["post"], schema["paths"]["/refunds/"]["put"]
    assert [(h["name"], h["required"]) for h in headers(post)] == [("Idempotency-Key", True)]
    assert "422" in post["responses"]
    assert headers(put) == []
    assert "422" not in put["responses"]


class TaggedSchema(AutoSchema):
    """A project's own schema class: every operation tagged "billing"."""

    def get_tags(self) -> list[str]:
        return ["billing"]


class Billing(IdempotencyMixin, APIView):
    schema = TaggedSchema()

    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)


def test_a_views_own_schema_class_keeps_its_say() -> None:
    post = operation(Billing.as_view())
    assert post["tags"] == ["billing"]
    assert [h["name"] for h in headers(post)] == ["Idempotency-Key"]
    assert "422" in post["responses"]


@api_view(["POST"])
@idempotent
@schema(None)
def hidden(request: Request) -> Response:
    return Response(status=201)


def test_a_function_left_out_of_the_schema_stays_out() -> None:
    """DRF's ``@schema(None)`` below ``@idempotent`` still excludes the view."""
    assert schema_of(path("hidden/", hidden), path("pay/", pay))["paths"].keys() == {"/pay/"}


def test_options_decided_per_request() -> None:
    (header,) = headers(operation(Negotiated.as_view()))
    assert header["required"] is True


def test_per_request_options_that_need_a_real_request_fall_back_to_the_attributes() -> None:
    (header,) = headers(operation(Fragile.as_view()))
    assert (header["name"], header["required"]) == ("Idempotency-Key", True)


def test_a_projects_view_extension_still_applies() -> None:
    post = operation(Legacy.as_view())
    assert [h["name"] for h in headers(post)] == ["Idempotency-Key"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Order"
    }
    assert list(post["responses"]) == ["201", "400", "409", "422", "503"]


class Documented(APIView):
    """Orders, as the project documents them."""


class DocumentedOrders(IdempotencyMixin, Documented):
    @extend_schema(request=OrderSerializer, responses=CREATED)
    def post(self, request: Request) -> Response:
        return Response(status=201)


def test_the_mixins_docstring_is_not_the_views_description() -> None:
    assert "description" not in operation(Orders.as_view())
    assert "description" not in operation(Orders.as_view(), "get")
    assert operation(DocumentedOrders.as_view())["description"] == (
        "Orders, as the project documents them."
    )
    assert operation(Bookings.as_view())["description"] == (
        "Not a decorated method: the view's own schema documents it."
    )


def envelope_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    return exception_handler(exc, context)


def test_errors_of_the_projects_own_shape_are_described_only() -> None:
    with override_settings(
        REST_FRAMEWORK={
            "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
            "EXCEPTION_HANDLER": f"{__name__}.envelope_handler",
        }
    ):
        responses = operation(Orders.as_view())["responses"]
    assert list(responses) == ["201", "400", "409", "422", "503"]
    assert all("content" not in responses[status] for status in ("400", "409", "422", "503"))
    assert "idempotency_key_mismatch" in responses["422"]["description"]

    responses = operation(PlainTextErrors.as_view())["responses"]
    assert list(responses) == ["201", "400", "409", "422", "503"]
    assert responses["409"].keys() == {"description", "headers"}
    # Whatever renders the answers, the transient ones carry Retry-After.
    assert set(responses["409"]["headers"]) == {"Retry-After"}
    assert "headers" not in responses["422"]


def test_the_demo_schema_endpoint(client: Any) -> None:
    response = client.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert [h["name"] for h in headers(paths["/api/orders/"]["post"])] == ["Idempotency-Key"]
    assert headers(paths["/api/orders/"]["get"]) == []
    (repeat,) = headers(paths["/api/orders/{id}/repeat/"]["post"])
    assert repeat["required"] is True
    assert [h["name"] for h in headers(paths["/api/function/orders/"]["post"])] == [
        "Idempotency-Key"
    ]


def test_stripes_answers_are_documented_with_their_schema_and_statuses() -> None:
    schema = schema_of(path("endpoint/", StripeAnswers.as_view()))
    responses = schema["paths"]["/endpoint/"]["post"]["responses"]

    assert list(responses) == ["201", "400", "409", "503"]  # the mismatch is a 400
    assert "idempotency_key_mismatch" in responses["400"]["description"]
    stripe_error = {"$ref": "#/components/schemas/IdempotencyStripeError"}
    for status in ("400", "409", "503"):
        assert responses[status]["content"] == {"application/json": {"schema": stripe_error}}
    assert "headers" not in responses["400"]
    error = schema["components"]["schemas"]["IdempotencyStripeError"]["properties"]["error"]
    assert error["properties"]["code"] == {"$ref": "#/components/schemas/IdempotencyErrorCode"}
    assert "idempotency_error" in error["properties"]["type"]["enum"]
    [header] = headers(schema["paths"]["/endpoint/"]["post"])
    assert "it gets a 400" in header["description"]
