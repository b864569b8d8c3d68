"""Django Ninja: ``@idempotent`` on the operations of a ``NinjaAPI`` or a
``Router`` (above or below the operation's decorator, sync and async), and
``IdempotencyMiddleware`` on an API's URLs, with the real django-ninja.

Every test that stores keys runs on the database store and on Redis (the
``store`` fixture). Each API has a namespace of its own: Ninja refuses two
APIs with one namespace.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

ninja = pytest.importorskip("ninja")

from django.db import transaction  # noqa: E402
from django.test import AsyncClient, Client  # noqa: E402
from helpers import InBackground, orders, replayed, send  # noqa: E402
from ninja import NinjaAPI, Router, Schema  # noqa: E402
from ninja.errors import HttpError  # noqa: E402
from ninja.responses import Status  # noqa: E402
from ninja.security import HttpBearer  # noqa: E402
from ninja.throttling import BaseThrottle  # noqa: E402

from demo.models import Order  # noqa: E402
from demo.ninja_api import OrderIn, OrderOut  # noqa: E402
from django_idempotency.decorators import idempotent  # noqa: E402
from django_idempotency.ninja import IdempotencyHttpError  # noqa: E402
from django_idempotency.testing import (  # noqa: E402
    assert_refuses_changed_body,
    assert_replays,
    assert_runs_once,
)

pytestmark = pytest.mark.django_db

ORDER = {"item": "tea", "quantity": 2}
_namespaces = itertools.count()


def new_api(**options: Any) -> NinjaAPI:
    return NinjaAPI(urls_namespace=f"ninja-test-{next(_namespaces)}", **options)


def _create(payload: OrderIn) -> Status:
    return Status(201, Order.objects.create(**payload.dict()))


async def _acreate(payload: OrderIn) -> Status:
    return Status(201, await Order.objects.acreate(**payload.dict()))


def mount(serve: Callable[..., str], api: NinjaAPI) -> str:
    """Serve ``api`` under /api/ and return that prefix."""
    serve(api.urls, "api/")
    return "/api"


# -- the ways an operation is protected ------------------------------------------------------


def _operations(api: NinjaAPI) -> None:
    """The same operation, protected each way Ninja users write it."""

    @idempotent
    @api.post("/above", response={201: OrderOut})
    def above(request: Any, payload: OrderIn) -> Status:
        return _create(payload)

    @api.post("/below", response={201: OrderOut})
    @idempotent
    def below(request: Any, payload: OrderIn) -> Status:
        return _create(payload)

    @idempotent
    @api.post("/async/above", response={201: OrderOut})
    async def async_above(request: Any, payload: OrderIn) -> Status:
        return await _acreate(payload)

    @api.post("/async/below", response={201: OrderOut})
    @idempotent
    async def async_below(request: Any, payload: OrderIn) -> Status:
        return await _acreate(payload)

    router = Router()

    @router.post("/orders", response={201: OrderOut})
    @idempotent
    def routed(request: Any, payload: OrderIn) -> Status:
        return _create(payload)

    api.add_router("/router", router)


FORMS = ["above", "below", "async/above", "async/below", "router/orders"]


@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
@pytest.mark.parametrize("form", FORMS)
def test_a_retry_is_a_replay(serve: Callable[..., str], uses: Any, form: str, handler: str) -> None:
    api = new_api()
    _operations(api)
    prefix = mount(serve, api)
    client: Any = AsyncClient() if handler == "asgi" else Client()

    first, _ = assert_replays(client, f"{prefix}/{form}", ORDER)

    assert json.loads(first.body) == {"id": Order.objects.get().pk, "item": "tea", "quantity": 2}
    assert orders() == 1


@pytest.mark.parametrize("form", FORMS)
def test_a_key_reused_with_another_body_is_refused_as_ninja_answers(
    serve: Callable[..., str], uses: Any, client: Client, form: str
) -> None:
    api = new_api()
    _operations(api)
    prefix = mount(serve, api)

    _, refused = assert_refuses_changed_body(client, f"{prefix}/{form}", ORDER, {"item": "coffee"})

    assert json.loads(refused.body) == {
        "detail": "This idempotency key was already used with a different request."
    }
    assert orders() == 1


def test_a_router_mounted_on_two_apis_is_protected_on_each(
    serve: Callable[..., str], uses: Any, client: Client
) -> None:
    router = Router()

    @router.post("/orders", response={201: OrderOut})
    @idempotent
    def create(request: Any, payload: OrderIn) -> Status:
        return _create(payload)

    first_api, second_api = new_api(), new_api()
    first_api.add_router("/shop", router)
    second_api.add_router("/shop", router)
    serve(first_api.urls, "one/")
    serve(second_api.urls, "two/")

    assert_replays(client, "/one/shop/orders", ORDER)
    assert_replays(client, "/two/shop/orders", ORDER)
    assert orders() == 2


def test_the_decorator_options_apply(serve: Callable[..., str], client: Client) -> None:
    api = new_api()

    @idempotent(required=True, replay_status=200)
    @api.post("/orders", response={201: OrderOut})
    def create(request: Any, payload: OrderIn) -> Status:
        return _create(payload)

    prefix = mount(serve, api)

    missing = send(client, f"{prefix}/orders", ORDER, key=None)
    assert missing.status_code == 400
    assert json.loads(missing.content) == {"detail": "This endpoint requires an idempotency key."}
    assert_replays(client, f"{prefix}/orders", ORDER, status=200)


def test_a_misspelt_option_is_refused_on_an_operation() -> None:
    api = new_api()
    with pytest.raises(TypeError, match=r"Did you mean idempotent\(ttl=\.\.\.\)\?"):

        @idempotent(tll=60)
        @api.post("/orders")
        def create(request: Any) -> dict[str, str]:
            return {}


# -- in flight, and a storm --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the first request commits from its thread
def test_a_duplicate_in_flight_gets_409_with_retry_after(
    serve: Callable[..., str], uses: Any
) -> None:
    api = new_api()
    entered, release = threading.Event(), threading.Event()

    @idempotent
    @api.post("/orders", response={201: OrderOut})
    def create(request: Any, payload: OrderIn) -> Status:
        entered.set()
        assert release.wait(10)
        return _create(payload)

    url = mount(serve, api) + "/orders"

    def send_order(client: Client) -> Any:
        return send(client, url, ORDER, "key-1")

    first = InBackground(send_order)
    try:
        assert entered.wait(10)
        duplicate = send_order(Client())
    finally:
        release.set()
    assert duplicate.status_code == 409
    assert duplicate["Retry-After"] == "1"
    assert json.loads(duplicate.content) == {
        "detail": "A request with this idempotency key is still being processed. Retry later."
    }
    assert first.result().status_code == 201
    assert replayed(send_order(Client()))
    assert orders() == 1


@pytest.mark.parametrize("form", ["sync", "async"])
@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_run_once(
    live_server: Any, serve: Callable[..., str], uses: Any, form: str
) -> None:
    api = new_api()

    @idempotent
    @api.post("/orders", response={201: OrderOut})
    def create(request: Any, payload: OrderIn) -> Status:
        time.sleep(0.3)
        return _create(payload)

    @idempotent
    @api.post("/async/orders", response={201: OrderOut})
    async def acreate(request: Any, payload: OrderIn) -> Status:
        await asyncio.sleep(0.3)
        return await _acreate(payload)

    path = mount(serve, api) + ("/orders" if form == "sync" else "/async/orders")

    answers = assert_runs_once(live_server.url + path, ORDER, count=Order.objects.count)

    assert {answer.status for answer in answers} == {201}


# -- Ninja's stages: authentication, throttling, validation, errors --------------------------------


class Token(HttpBearer):
    def authenticate(self, request: Any, token: str) -> str | None:
        return token if token.startswith("client-") else None


def _private(api: NinjaAPI, **options: Any) -> None:
    @idempotent
    @api.post("/orders", response={201: OrderOut}, auth=Token(), **options)
    def create(request: Any, payload: OrderIn) -> Status:
        return _create(payload)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_request_ninja_refuses_claims_nothing(
    serve: Callable[..., str], client: Client, claimed: list[Any]
) -> None:
    api = new_api()
    _private(api)
    url = mount(serve, api) + "/orders"

    refused = send(client, url, ORDER, "key-1")
    accepted = send(client, url, ORDER, "key-1", headers=_bearer("client-a"))

    assert refused.status_code == 401
    assert accepted.status_code == 201
    assert len(claimed) == 1


def test_keys_are_scoped_to_the_client_ninja_authenticated(
    serve: Callable[..., str], uses: Any, client: Client
) -> None:
    api = new_api()
    _private(api)
    url = mount(serve, api) + "/orders"

    assert_replays(client, url, ORDER, key="key-1", headers=_bearer("client-a"))
    other = send(client, url, ORDER, "key-1", headers=_bearer("client-b"))

    assert other.status_code == 201
    assert not replayed(other)
    assert orders() == 2


def test_a_throttled_request_claims_nothing(
    serve: Callable[..., str], client: Client, claimed: list[Any]
) -> None:
    class NoneAllowed(BaseThrottle):
        def allow_request(self, request: Any) -> bool:
            return False

    api = new_api()
    _private(api, throttle=NoneAllowed())
    url = mount(serve, api) + "/orders"

    answer = send(client, url, ORDER, "key-1", headers=_bearer("client-a"))

    assert answer.status_code == 429
    assert claimed == []


def test_a_request_ninja_finds_invalid_claims_nothing(
    serve: Callable[..., str], client: Client, claimed: list[Any]
) -> None:
    api = new_api()
    _operations(api)
    url = mount(serve, api) + "/above"
    invalid = send(client, url, {"quantity": "many"}, "key-1")
    valid = send(client, url, ORDER, "key-1")

    assert invalid.status_code == 422
    assert valid.status_code == 201
    assert len(claimed) == 1


def test_an_http_error_is_stored_and_replayed(
    serve: Callable[..., str], uses: Any, client: Client
) -> None:
    api = new_api()
    runs: list[int] = []

    @idempotent
    @api.post("/orders")
    def create(request: Any, payload: OrderIn) -> Status:
        runs.append(1)
        raise HttpError(409, "Out of tea.")

    url = mount(serve, api) + "/orders"

    first, retry = assert_replays(client, url, ORDER)

    assert first.status == 409
    assert json.loads(retry.body) == {"detail": "Out of tea."}
    assert runs == [1]


def test_an_exception_releases_the_key(
    serve: Callable[..., str], uses: Any, client: Client
) -> None:
    api = new_api()
    failures = [True]

    @idempotent
    @api.post("/orders", response={201: OrderOut})
    def create(request: Any, payload: OrderIn) -> Status:
        if failures and failures.pop():
            raise ValueError("boom")
        return _create(payload)

    url = mount(serve, api) + "/orders"
    client.raise_request_exception = False

    failed = send(client, url, ORDER, "key-1")
    assert failed.status_code == 500
    assert_replays(client, url, ORDER, key="key-1")
    assert orders() == 1


def test_an_api_handler_for_idempotency_errors_renders_them(
    serve: Callable[..., str], client: Client
) -> None:
    api = new_api()

    @api.exception_handler(IdempotencyHttpError)
    def idempotency_error(request: Any, exc: IdempotencyHttpError) -> Any:
        return api.create_response(
            request, {"error": exc.error.code, "message": exc.message}, status=exc.status_code
        )

    _operations(api)
    url = mount(serve, api) + "/above"

    _, refused = assert_refuses_changed_body(client, url, ORDER, {"item": "coffee"})

    assert json.loads(refused.body) == {
        "error": "idempotency_key_mismatch",
        "message": "This idempotency key was already used with a different request.",
    }


def test_problem_json_where_the_project_chooses_it(
    serve: Callable[..., str], client: Client, idempotency_settings: Any
) -> None:
    idempotency_settings(ERROR_RESPONSE="django_idempotency.errors.problem_response")
    api = new_api()
    _operations(api)
    url = mount(serve, api) + "/above"

    _, refused = assert_refuses_changed_body(client, url, ORDER, {"item": "coffee"})

    assert refused.headers["Content-Type"] == "application/problem+json"
    assert json.loads(refused.body)["code"] == "idempotency_key_mismatch"


# -- transactions ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("atomic_requests")
def test_a_success_whose_writes_roll_back_is_never_sent(
    serve: Callable[..., str], client: Client
) -> None:
    api = new_api()
    doomed = [True]

    @idempotent
    @api.post("/orders", response={201: OrderOut})
    def create(request: Any, payload: OrderIn) -> Status:
        created = _create(payload)
        if doomed and doomed.pop():
            transaction.set_rollback(True)
        return created

    url = mount(serve, api) + "/orders"
    first = send(client, url, ORDER, "key-1")
    assert first.status_code == 503
    assert orders() == 0
    assert_replays(client, url, ORDER, key="key-1")
    assert orders() == 1


@pytest.mark.django_db(transaction=True)
def test_atomic_mode_rolls_back_the_writes_of_an_error(
    serve: Callable[..., str], client: Client
) -> None:
    api = new_api()

    @idempotent(atomic=True)
    @api.post("/orders")
    def create(request: Any, payload: OrderIn) -> Status:
        _create(payload)
        raise HttpError(400, "Not today.")

    url = mount(serve, api) + "/orders"

    first, _ = assert_replays(client, url, ORDER)

    assert first.status == 400
    assert orders() == 0


# -- the middleware on an API's URLs ------------------------------------------------------------


def _plain(api: NinjaAPI) -> None:
    @api.post("/orders", response={201: OrderOut}, auth=Token())
    def create(request: Any, payload: OrderIn) -> Status:
        return _create(payload)

    @api.post("/async/orders", response={201: OrderOut})
    async def acreate(request: Any, payload: OrderIn) -> Status:
        return await _acreate(payload)

    @idempotent(replay_status=200)
    @api.post("/own/orders", response={201: OrderOut})
    def own(request: Any, payload: OrderIn) -> Status:
        return _create(payload)


@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
def test_the_middleware_protects_an_apis_operations(
    serve: Callable[..., str], uses: Any, idempotency_settings: Any, handler: str
) -> None:
    api = new_api()
    _plain(api)
    prefix = mount(serve, api)
    idempotency_settings(PROTECTED_URLS=[f"{api.urls_namespace}:"])
    client: Any = AsyncClient() if handler == "asgi" else Client()

    assert_replays(client, f"{prefix}/orders", ORDER, headers=_bearer("client-a"))
    assert_replays(client, f"{prefix}/async/orders", ORDER)
    # The operation's own protection, with its own options:
    own, _ = assert_replays(client, f"{prefix}/own/orders", ORDER, status=200)
    assert own.status == 201
    assert orders() == 3


def test_the_middleware_claims_after_ninjas_authentication(
    serve: Callable[..., str], idempotency_settings: Any, client: Client, claimed: list[Any]
) -> None:
    api = new_api()
    _plain(api)
    url = mount(serve, api) + "/orders"
    idempotency_settings(PROTECTED_URLS=["/api/"])

    refused = send(client, url, ORDER, "key-1")

    assert refused.status_code == 401
    assert claimed == []


def test_an_operation_the_middleware_no_longer_protects_runs_unprotected(
    serve: Callable[..., str], idempotency_settings: Any, client: Client
) -> None:
    api = new_api()
    _plain(api)
    url = mount(serve, api) + "/async/orders"
    idempotency_settings(PROTECTED_URLS=["/api/"])
    assert_replays(client, url, ORDER)

    idempotency_settings(PROTECTED_URLS=[])
    for _ in range(2):
        assert not replayed(send(client, url, ORDER, "key-2"))
    assert orders() == 3


# -- the OpenAPI schema ---------------------------------------------------------------------------


def _schema(api: NinjaAPI, path: str) -> dict[str, Any]:
    """The schema of the operation at ``path`` of ``api`` (mounted at /api/)."""
    operation: dict[str, Any] = api.get_openapi_schema()["paths"]["/api" + path]["post"]
    return operation


def test_the_schema_shows_the_header_and_the_answers(serve: Callable[..., str]) -> None:
    api = new_api()
    _operations(api)

    @api.post("/plain", response={201: OrderOut})
    def plain(request: Any, payload: OrderIn) -> Status:
        return _create(payload)

    mount(serve, api)
    for path in ("/above", "/below", "/async/below", "/router/orders"):
        operation = _schema(api, path)
        [header] = [p for p in operation["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key"
        assert header["required"] is False
        assert set(operation["responses"]) == {201, 400, 409, 422, 503}
        assert "Retry-After" in operation["responses"][409]["headers"]
        assert "idempotency_key_mismatch" in operation["responses"][422]["description"]
    plain_operation = _schema(api, "/plain")
    assert plain_operation["parameters"] == []
    assert set(plain_operation["responses"]) == {201}


def test_the_schema_documents_stripes_answers(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    idempotency_settings(ERROR_RESPONSE="django_idempotency.errors.stripe_response")
    api = new_api()
    _operations(api)
    mount(serve, api)

    responses = _schema(api, "/above")["responses"]

    assert set(responses) == {201, 400, 409, 503}
    assert "idempotency_key_mismatch" in responses[400]["description"]
    schema = responses[400]["content"]["application/json"]["schema"]
    assert schema["required"] == ["error"]
    assert schema["properties"]["error"]["required"] == ["type", "code", "message"]


def test_the_schema_keeps_what_the_operation_documents(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    api = new_api()

    class Conflict(Schema):
        reason: str

    @idempotent(required=True)
    @api.post("/orders", response={201: OrderOut, 409: Conflict})
    def create(request: Any, payload: OrderIn) -> Status:
        return _create(payload)

    mount(serve, api)
    operation = _schema(api, "/orders")
    assert operation["responses"][409]["description"] != (
        "A request with this idempotency key is still being processed; retry later "
        "(idempotency_key_in_use)."
    )
    assert "Conflict" in json.dumps(operation["responses"][409])
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["required"] is True


def test_the_schema_follows_the_settings(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    api = new_api()
    _operations(api)

    mount(serve, api)
    idempotency_settings(
        HEADER="X-Request-Key", ERROR_RESPONSE="django_idempotency.errors.problem_response"
    )

    operation = _schema(api, "/above")
    [header] = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == "X-Request-Key"
    content = operation["responses"][422]["content"]["application/problem+json"]
    assert "idempotency_key_mismatch" in content["schema"]["properties"]["code"]["enum"]


# -- the demo's endpoints -----------------------------------------------------------------------


def test_the_demo_endpoints(client: Client) -> None:
    assert_replays(client, "/ninja/orders", ORDER)
    assert_replays(client, "/ninja/async/orders", ORDER)
    anonymous = send(client, "/ninja/private/orders", ORDER, key=None)
    assert anonymous.status_code == 401
    assert_replays(client, "/ninja/private/orders", ORDER, headers=_bearer("demo-token"))
    assert orders() == 3
