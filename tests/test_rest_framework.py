"""Django REST framework: ``IdempotencyMixin`` and ``@idempotent`` on DRF views.

What DRF adds to the decorator's semantics: the claim comes after DRF's
authentication, permissions and throttling; the stored response is the
rendered one, whatever renderer content negotiation chose; exceptions DRF
turns into responses (a ``ValidationError``) are stored like returned ones;
errors follow the project's exception handler where it has one; and the
default scope knows DRF's ``request.auth``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("rest_framework")

from django.contrib.auth.models import AnonymousUser
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory, override_settings
from django.urls import include
from factories import UserFactory
from helpers import KEY, ORDER, orders, problem, replayed, send
from rest_framework import status
from rest_framework.authentication import BaseAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.decorators import action, api_view
from rest_framework.exceptions import APIException
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView, exception_handler
from rest_framework.viewsets import ModelViewSet

from demo.api import OrderSerializer
from demo.models import Order
from django_idempotency.conf import OptionError
from django_idempotency.decorators import idempotent
from django_idempotency.errors import IdempotencyError
from django_idempotency.models import IdempotencyKey
from django_idempotency.rest_framework import UNSET, IdempotencyAPIException, IdempotencyMixin
from django_idempotency.scope import auth_identity, default_scope
from django_idempotency.testing import assert_refuses_changed_body, assert_replays

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clear_throttles() -> None:
    cache.clear()  # DRF keeps throttle history in the default cache


# -- views -------------------------------------------------------------------------------------


def create(request: Request) -> Response:
    serializer = OrderSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    serializer.save()
    return Response(serializer.data, status=status.HTTP_201_CREATED)


class Orders(IdempotencyMixin, APIView):
    """A plain APIView with the default options, open to anyone."""

    authentication_classes = [TokenAuthentication]

    def post(self, request: Request) -> Response:
        return create(request)


class OrderViewSet(IdempotencyMixin, ModelViewSet[Order]):
    queryset = Order.objects.order_by("pk")
    serializer_class = OrderSerializer
    authentication_classes: list[type[BaseAuthentication]] = []

    @action(detail=True, methods=["post"], idempotency_required=True)
    def repeat(self, request: Request, pk: str) -> Response:
        order = self.get_object()
        copy = Order.objects.create(item=order.item, quantity=order.quantity)
        return Response(OrderSerializer(copy).data, status=status.HTTP_201_CREATED)


def serve_router(serve: Callable[..., str]) -> str:
    router = SimpleRouter()
    router.register("orders", OrderViewSet, basename="order")
    serve(include(router.urls), route="")
    return "/orders/"


# -- replay ------------------------------------------------------------------------------------


def test_retry_replays_the_rendered_response_byte_for_byte(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(Orders.as_view())
    first, _ = assert_replays(client, url, {"item": "coffee", "quantity": 2})
    assert first.status == 201
    assert first.headers["Content-Type"] == "application/json"
    assert not first.replayed
    assert orders() == 1


def test_other_body_with_the_same_key_is_refused_as_problem_json(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(Orders.as_view())
    _, refused = assert_refuses_changed_body(
        client, url, {"item": "coffee"}, {"item": "tea", "quantity": 1}
    )
    assert json.loads(refused.body)["code"] == "idempotency_key_mismatch"
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert orders() == 1


def test_validation_error_is_stored_and_replayed(client: Client, serve: Callable[..., str]) -> None:
    """DRF turns the ValidationError into a 400 before the key is completed:
    it is the view's answer to that request, like a returned 400."""
    url = serve(Orders.as_view())
    first = send(client, url, {"item": "tea", "quantity": 0})
    retry = send(client, url, {"item": "tea", "quantity": 0})
    assert first.status_code == retry.status_code == 400
    assert json.loads(first.content) == {"quantity": ["Order at least one."]}
    assert retry.content == first.content
    assert replayed(retry)


class Failing(IdempotencyMixin, APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    failures: list[Exception] = []

    def post(self, request: Request) -> Response:
        Order.objects.create(item="tea")
        if self.failures:
            raise self.failures.pop(0)
        return Response({"ok": True}, status=201)


@pytest.mark.parametrize(
    ("failure", "answer"),
    [
        pytest.param(APIException("The bank is down."), 500, id="api-exception-500"),
        pytest.param(RuntimeError("boom"), None, id="uncaught-exception"),
    ],
)
def test_server_errors_release_the_key_so_a_retry_runs_again(
    client: Client, serve: Callable[..., str], failure: Exception, answer: int | None
) -> None:
    Failing.failures = [failure]
    url = serve(Failing.as_view())
    client.raise_request_exception = False
    first = send(client, url)
    assert first.status_code == (answer or 500)
    retry = send(client, url)
    assert retry.status_code == 201
    assert not replayed(retry)
    assert orders() == 2
    assert IdempotencyKey.objects.get().response_status == 201


# -- authentication, permissions and throttling come first ------------------------------------


class Private(IdempotencyMixin, APIView):
    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        return create(request)


def token_for(username: str) -> str:
    token: Token = Token.objects.create(user=UserFactory(username=username))
    return f"Token {token.key}"


def test_unauthenticated_request_claims_nothing(client: Client, serve: Callable[..., str]) -> None:
    url = serve(Private.as_view())
    refused = send(client, url)
    assert refused.status_code == 401
    assert not IdempotencyKey.objects.exists()
    created = send(client, url, headers={"Authorization": token_for("ada")})
    assert created.status_code == 201
    assert not replayed(created)
    assert orders() == 1


def test_keys_are_scoped_to_the_token_user(client: Client, serve: Callable[..., str]) -> None:
    url = serve(Private.as_view())
    ada, bob = token_for("ada"), token_for("bob")
    first_ada = send(client, url, headers={"Authorization": ada})
    first_bob = send(client, url, headers={"Authorization": bob})
    assert not replayed(first_bob)
    assert first_bob.content != first_ada.content
    retry_ada = send(client, url, headers={"Authorization": ada})
    assert replayed(retry_ada)
    assert retry_ada.content == first_ada.content
    assert orders() == 2


class DeniedWhenAsked(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.headers.get("X-Deny") != "yes"


class ThrottledWhenAsked(BaseThrottle):
    def allow_request(self, request: Request, view: APIView) -> bool:
        return request.headers.get("X-Throttle") != "yes"

    def wait(self) -> float:
        return 30.0


class Guarded(IdempotencyMixin, APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes = [DeniedWhenAsked]
    throttle_classes = [ThrottledWhenAsked]

    def post(self, request: Request) -> Response:
        return create(request)


@pytest.mark.parametrize(
    ("header", "refusal"), [("X-Deny", 403), ("X-Throttle", 429)], ids=["permission", "throttle"]
)
def test_request_refused_by_permissions_or_throttling_stores_nothing(
    client: Client, serve: Callable[..., str], header: str, refusal: int
) -> None:
    url = serve(Guarded.as_view())
    assert send(client, url, headers={header: "yes"}).status_code == refusal
    assert not IdempotencyKey.objects.exists()
    # The same key is still new: the next allowed request runs the view.
    created = send(client, url)
    assert created.status_code == 201
    assert not replayed(created)
    assert orders() == 1


def test_refusal_comes_before_a_replay(client: Client, serve: Callable[..., str]) -> None:
    """A throttled client does not get the stored response either."""
    url = serve(Guarded.as_view())
    send(client, url)
    assert send(client, url, headers={"X-Throttle": "yes"}).status_code == 429


class ReadsDataInPermission(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.data.get("item") != "forbidden"


class StreamJSONParser(BaseParser):
    """A parser that reads the request stream, as most parsers do (DRF's own
    JSON and form parsers read ``request.body`` instead, since 3.16)."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        return json.load(stream)


class DataPermission(IdempotencyMixin, APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes = [ReadsDataInPermission]
    parser_classes = [StreamJSONParser]

    def post(self, request: Request) -> Response:
        return create(request)


def test_permission_reading_request_data_before_the_claim(
    client: Client, serve: Callable[..., str]
) -> None:
    """The parser consumes the stream in check_permissions(), before the
    claim; the fingerprint still has the body's bytes."""
    url = serve(DataPermission.as_view())
    assert send(client, url).status_code == 201
    assert replayed(send(client, url))
    assert send(client, url, {"item": "tea", "quantity": 3}).status_code == 422


class DataGetter(IdempotencyMixin, APIView):
    """Options decided from the request's data, parsed from the stream."""

    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes: list[type[BasePermission]] = []
    parser_classes = [StreamJSONParser]

    def get_idempotency_options(self) -> dict[str, Any]:
        return {"replay_status": 202 if self.request.data.get("item") == "tea" else 200}

    def post(self, request: Request) -> Response:
        return create(request)


def test_per_request_options_reading_request_data(
    client: Client, serve: Callable[..., str]
) -> None:
    """A ``get_idempotency_options()`` that parses the body runs before the claim;
    the fingerprint still has the body's bytes, and the view its data."""
    url = serve(DataGetter.as_view())
    tea = {"item": "tea", "quantity": 3}

    assert send(client, url, tea).status_code == 201
    retry = send(client, url, tea)
    assert (retry.status_code, replayed(retry)) == (202, True)
    assert send(client, url, {"item": "tea", "quantity": 4}).status_code == 422
    assert Order.objects.get().quantity == 3


class EitherRequired(IdempotencyMixin, APIView):
    """``required`` is True, or 1 for a client that sends ``X-Number``."""

    authentication_classes: list[type[BaseAuthentication]] = []
    permission_classes: list[type[BasePermission]] = []

    def get_idempotency_options(self) -> dict[str, Any]:
        return {"required": 1 if "X-Number" in self.request.headers else True}

    def post(self, request: Request) -> Response:
        return create(request)


def test_options_equal_but_of_another_type_are_not_confused(
    client: Client, serve: Callable[..., str]
) -> None:
    """``1 == True``: the protection parsed from one, kept for the requests
    that return the same options, must not answer for the other."""
    url = serve(EitherRequired.as_view())

    problem(send(client, url, key=None), 400, "idempotency_key_missing")
    with pytest.raises(
        OptionError, match=r"EitherRequired\.get_idempotency_options\(\)\['required'\]"
    ):
        send(client, url, key=None, headers={"X-Number": "1"})


# -- the default scope and request.auth ---------------------------------------------------------


class ApiKeyAuthentication(BaseAuthentication):
    """A client that is not a user: DRF's user stays anonymous, the key is request.auth."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        key = request.headers.get("X-Api-Key")
        return (AnonymousUser(), key) if key else None


class ByApiKey(IdempotencyMixin, APIView):
    authentication_classes = [ApiKeyAuthentication]

    def post(self, request: Request) -> Response:
        return create(request)


def test_without_a_user_keys_are_scoped_to_the_api_key(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(ByApiKey.as_view())
    first = send(client, url, headers={"X-Api-Key": "partner-a-secret"})
    other = send(client, url, headers={"X-Api-Key": "partner-b-secret"})
    assert not replayed(other)
    assert orders() == 2
    assert replayed(send(client, url, headers={"X-Api-Key": "partner-a-secret"}))
    assert first.status_code == 201
    scopes = list(IdempotencyKey.objects.values_list("scope", flat=True))
    assert len(set(scopes)) == 2
    assert not any("secret" in scope for scope in scopes), "the API key itself is stored"


def test_auth_identity_of_a_model_instance_hides_its_pk() -> None:
    token = Token(key="0123456789abcdef0123456789abcdef01234567")
    identity = auth_identity(token)
    assert identity.startswith("authtoken.token:")
    assert token.key not in identity


def test_auth_of_an_unknown_kind_is_refused_rather_than_guessed() -> None:
    request = RequestFactory().post("/orders/")
    request.user = AnonymousUser()
    request.auth = object()  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match="scope_func"):
        default_scope(request)


# -- content negotiation ------------------------------------------------------------------------


class Negotiated(IdempotencyMixin, APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]

    def post(self, request: Request) -> Response:
        return create(request)


def test_browsable_api_request_replays_its_html(client: Client, serve: Callable[..., str]) -> None:
    url = serve(Negotiated.as_view())
    html = {"Accept": "text/html"}
    first = send(client, url, headers=html)
    assert first.status_code == 201
    assert first["Content-Type"].startswith("text/html")
    retry = send(client, url, headers=html)
    assert replayed(retry)
    assert retry.content == first.content
    assert retry["Content-Type"] == first["Content-Type"]
    assert orders() == 1


def test_replay_keeps_the_first_representation_whatever_the_retry_accepts(
    client: Client, serve: Callable[..., str]
) -> None:
    """The stored response is the one the first request negotiated."""
    url = serve(Negotiated.as_view())
    first = send(client, url, headers={"Accept": "application/json"})
    retry = send(client, url, headers={"Accept": "text/html"})
    assert replayed(retry)
    assert retry.content == first.content
    assert retry["Content-Type"] == "application/json"


class Uploads(IdempotencyMixin, APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    parser_classes = [MultiPartParser]

    def post(self, request: Request) -> Response:
        upload = request.data["receipt"]
        order = Order.objects.create(item=request.data["item"], quantity=len(upload.read()))
        return Response({"id": order.pk, "size": order.quantity}, status=201)


def test_multipart_upload_is_fingerprinted_from_its_parts(
    client: Client, serve: Callable[..., str]
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    url = serve(Uploads.as_view())

    def upload(content: bytes) -> Any:
        receipt = SimpleUploadedFile("receipt.txt", content, content_type="text/plain")
        return client.post(
            url, {"item": "tea", "receipt": receipt}, headers={"Idempotency-Key": KEY}
        )

    first = upload(b"12345")
    assert first.status_code == 201
    assert json.loads(first.content)["size"] == 5
    assert replayed(upload(b"12345"))
    problem(upload(b"123456"), 422, "idempotency_key_mismatch")
    assert orders() == 1


def test_multipart_retry_with_another_boundary_is_a_replay(
    client: Client, serve: Callable[..., str], settings: Any
) -> None:
    """Clients make a new random boundary for each request, retries included;
    the upload is larger than DATA_UPLOAD_MAX_MEMORY_SIZE, which limits what
    is read into memory, not files streamed to disk."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test.client import encode_multipart

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    url = serve(Uploads.as_view())

    def upload(boundary: str) -> Any:
        receipt = SimpleUploadedFile("receipt.txt", b"x" * 5000, content_type="text/plain")
        body = encode_multipart(boundary, {"item": "tea", "receipt": receipt})
        return client.post(
            url,
            body,
            content_type=f"multipart/form-data; boundary={boundary}",
            headers={"Idempotency-Key": KEY},
        )

    first = upload("----first7MA4YWxkTrZu0gW")
    retry = upload("----retry5Fh3QxwZ9pLk2Rd")

    assert first.status_code == 201
    assert json.loads(first.content)["size"] == 5000
    assert replayed(retry)
    assert orders() == 1


# -- errors through the project's exception handler ---------------------------------------------


def envelope_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """A project's handler: every error as {"error": {"code", "message"}}."""
    response = exception_handler(exc, context)
    if response is not None:
        codes = exc.get_codes() if isinstance(exc, APIException) else "error"
        response.data = {"error": {"code": codes, "message": str(response.data.get("detail"))}}
    return response


HANDLER = f"{__name__}.envelope_handler"


def test_custom_exception_handler_renders_idempotency_errors(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(Orders.as_view())
    send(client, url)
    with override_settings(REST_FRAMEWORK={"EXCEPTION_HANDLER": HANDLER}):
        refused = send(client, url, {"item": "tea", "quantity": 1})
    assert refused.status_code == 422
    assert refused["Content-Type"] == "application/json"
    assert json.loads(refused.content) == {
        "error": {
            "code": "idempotency_key_mismatch",
            "message": "This idempotency key was already used with a different request.",
        }
    }


class Required(IdempotencyMixin, APIView):
    authentication_classes: list[type[BaseAuthentication]] = []
    idempotency_required = True

    def post(self, request: Request) -> Response:
        return create(request)


def test_custom_exception_handler_sees_the_idempotency_error(
    client: Client, serve: Callable[..., str]
) -> None:
    seen: list[Exception] = []

    def handler(exc: Exception, context: dict[str, Any]) -> Response | None:
        seen.append(exc)
        return exception_handler(exc, context)

    url = serve(Required.as_view())
    with override_settings(REST_FRAMEWORK={"EXCEPTION_HANDLER": handler}):
        refused = send(client, url, key=None)
    assert refused.status_code == 400
    assert json.loads(refused.content) == {"detail": "This endpoint requires an idempotency key."}
    (error,) = seen
    assert isinstance(error, IdempotencyAPIException)
    assert error.error.code == "idempotency_key_missing"


def test_in_use_answer_keeps_retry_after_through_the_handler(
    client: Client, serve: Callable[..., str]
) -> None:
    from helpers import in_flight_claim

    url = serve(Orders.as_view())
    in_flight_claim(url)
    with override_settings(REST_FRAMEWORK={"EXCEPTION_HANDLER": HANDLER}):
        busy = send(client, url)
    assert busy.status_code == 409
    assert busy["Retry-After"] == "1"
    assert json.loads(busy.content)["error"]["code"] == "idempotency_key_in_use"


def test_error_response_option_wins_over_the_handler(
    client: Client, serve: Callable[..., str]
) -> None:
    from django.http import JsonResponse

    def legacy_errors(request: Request, error: IdempotencyError) -> JsonResponse:
        return JsonResponse({"legacy": error.code}, status=error.status)

    class Legacy(Required):
        idempotency_error_response = legacy_errors  # a plain function, not bound to the view

    url = serve(Legacy.as_view())
    with override_settings(REST_FRAMEWORK={"EXCEPTION_HANDLER": HANDLER}):
        refused = send(client, url, key=None)
    assert json.loads(refused.content) == {"legacy": "idempotency_key_missing"}


# -- viewsets -----------------------------------------------------------------------------------


def test_viewset_create_update_and_destroy_are_protected(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve_router(serve)
    created = send(client, url)
    assert replayed(send(client, url))
    assert orders() == 1
    detail = f"{url}{json.loads(created.content)['id']}/"

    update = {"item": "latte", "quantity": 3}
    first = send(client, detail, update, key="update-1", method="put")
    assert first.status_code == 200
    Order.objects.update(quantity=9)  # a later change the replay must not undo or show
    retry = send(client, detail, update, key="update-1", method="put")
    assert replayed(retry)
    assert retry.content == first.content
    assert Order.objects.get().quantity == 9

    patched = send(client, detail, {"quantity": 4}, key="patch-1", method="patch")
    assert replayed(send(client, detail, {"quantity": 4}, key="patch-1", method="patch"))
    assert patched.status_code == 200

    deleted, _ = assert_replays(client, detail, method="delete")
    assert deleted.status == 204
    assert send(client, detail, None, key="delete-2", method="delete").status_code == 404


def test_viewset_reads_are_not_protected(client: Client, serve: Callable[..., str]) -> None:
    url = serve_router(serve)
    send(client, url)
    listing = send(client, url, method="get")
    assert listing.status_code == 200
    assert not replayed(listing)
    assert IdempotencyKey.objects.count() == 1


def test_action_options_come_from_the_action_decorator(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve_router(serve)
    order_id = json.loads(send(client, url, key=None).content)["id"]
    repeat = f"{url}{order_id}/repeat/"
    problem(send(client, repeat, {}, key=None), 400, "idempotency_key_missing")
    assert send(client, repeat, {}).status_code == 201
    assert replayed(send(client, repeat, {}))
    assert orders() == 2


class PerAction(IdempotencyMixin, ModelViewSet[Order]):
    """Options decided per request: keys required to create, optional elsewhere."""

    queryset = Order.objects.order_by("pk")
    serializer_class = OrderSerializer
    authentication_classes: list[type[BaseAuthentication]] = []

    def get_idempotency_options(self) -> dict[str, Any]:
        return {"required": self.action == "create", "ttl": UNSET}  # the setting's ttl


def test_options_decided_per_request(client: Client, serve: Callable[..., str]) -> None:
    url = serve(PerAction.as_view({"post": "create"}), route="orders/")
    detail = serve(PerAction.as_view({"put": "update"}), route="orders/<int:pk>/")
    problem(send(client, url, key=None), 400, "idempotency_key_missing")
    order_id = json.loads(send(client, url).content)["id"]
    updated = send(client, detail.replace("<int:pk>", str(order_id)), ORDER, key=None, method="put")
    assert updated.status_code == 200


def test_method_without_a_handler_claims_nothing(client: Client, serve: Callable[..., str]) -> None:
    url = serve(Orders.as_view())
    assert send(client, url, method="put").status_code == 405
    assert not IdempotencyKey.objects.exists()


# -- @idempotent on @api_view -------------------------------------------------------------------


@idempotent
@api_view(["POST"])
def decorated_outside(request: Request) -> Response:
    return create(request)


@api_view(["POST"])
@idempotent(required=True)
def decorated_inside(request: Request) -> Response:
    return create(request)


@pytest.mark.parametrize("view", [decorated_outside, decorated_inside], ids=["above", "below"])
def test_idempotent_with_api_view_in_either_order(
    client: Client, serve: Callable[..., str], view: Callable[..., Any]
) -> None:
    url = serve(view)
    first = send(client, url)
    retry = send(client, url)
    assert first.status_code == 201
    assert replayed(retry)
    assert retry.content == first.content
    invalid = send(client, url, {"item": "tea", "quantity": 0}, key="invalid-1")
    assert invalid.status_code == 400
    again = send(client, url, {"item": "tea", "quantity": 0}, key="invalid-1")
    assert replayed(again), "a ValidationError is stored in either order, as under the mixin"
    assert orders() == 1


@idempotent
@api_view(["POST"])
def private_outside(request: Request) -> Response:
    return create(request)


private_outside.cls.authentication_classes = [TokenAuthentication]  # type: ignore[attr-defined]
private_outside.cls.permission_classes = [IsAuthenticated]  # type: ignore[attr-defined]


def test_idempotent_above_api_view_runs_after_authentication(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(private_outside)
    assert send(client, url).status_code == 401
    assert not IdempotencyKey.objects.exists()


def test_idempotent_on_an_api_view_class_says_what_to_use() -> None:
    with pytest.raises(TypeError, match="IdempotencyMixin"):
        idempotent(Orders)


def test_idempotent_on_a_view_already_protected_by_the_mixin() -> None:
    with pytest.raises(TypeError, match="already protected"):
        idempotent(Orders.as_view())


# -- misuse is refused when the class is defined --------------------------------------------------


def test_mixin_listed_after_the_view_class_is_refused() -> None:
    with pytest.raises(TypeError, match="before the DRF view class"):
        type("Wrong", (APIView, IdempotencyMixin), {})


def test_unknown_option_attribute_is_refused() -> None:
    with pytest.raises(TypeError, match="idempotency_tll"):
        type("Typo", (IdempotencyMixin, APIView), {"idempotency_tll": 60})


def test_invalid_option_value_is_refused_with_its_attribute_name() -> None:
    with pytest.raises(OptionError, match=r"Negative\.idempotency_ttl"):
        type("Negative", (IdempotencyMixin, APIView), {"idempotency_ttl": -1})


def test_invalid_option_passed_to_as_view_is_refused() -> None:
    with pytest.raises(OptionError, match="idempotency_on_conflict"):
        Orders.as_view(idempotency_on_conflict=200)


def test_every_per_view_option_is_an_attribute_of_the_mixin() -> None:
    """So that each can be set on a class, by as_view() and by @action, which
    DRF only accepts for attributes the view class has."""
    from django_idempotency.conf import PER_VIEW_OPTIONS

    declared = {name for name in vars(IdempotencyMixin) if name.startswith("idempotency_")}
    assert declared == {f"idempotency_{name}" for name in PER_VIEW_OPTIONS}
    assert all(getattr(IdempotencyMixin, name) is UNSET for name in declared)
