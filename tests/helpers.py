"""What the test modules share: requests sent with an idempotency key, checks of
the answers, views that count what they do, claims of requests still in
flight, and gates that hold a view's first run.

Every view here creates a ``demo.models.Order`` per run (or counts its runs),
so a test sees whether a request ran the view or was answered without it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connections
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.test import AsyncClient, Client, RequestFactory
from django.urls import resolve
from django.utils.http import http_date

from demo.models import Order
from django_idempotency.fingerprint import request_fingerprint
from django_idempotency.scope import default_scope
from django_idempotency.storage import BaseStorage, DatabaseStorage, RequestKey

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedASGIResponse as AsyncResponse
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

View = Callable[..., HttpResponseBase]
AsyncView = Callable[..., Awaitable[HttpResponseBase]]

#: The body and the key of a request, unless a test sends others.
ORDER: dict[str, Any] = {"item": "espresso", "quantity": 2}
KEY = "order-7f3c9b21"

#: A lower-case UUID, the key format of BetLink.
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

#: ttl and lease, in seconds, of the claims tests make on a store directly.
TTL = 3600.0
LEASE = 30.0

#: The mark of a test that runs the system checks the way management commands do
#: (``call_command("check")``, ``skip_checks=False``): from Django 6.1 on, checks
#: given no databases run against every alias, and the model checks ask each
#: database what it supports, which may open a connection to it. Transactional,
#: so that those connections are closed after the test (a connection left open
#: on a mirror alias would keep the test database from being dropped).
RUNS_SYSTEM_CHECKS = pytest.mark.django_db(transaction=True, databases="__all__")


# -- requests ----------------------------------------------------------------------------------


def request_call(
    data: Any = ORDER,
    key: str | None = KEY,
    *,
    method: str = "post",
    headers: dict[str, str] | None = None,
    key_header: str = "Idempotency-Key",
) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """The test client method, arguments and keyword arguments that send ``data``
    as JSON (bytes and strings as they are) with ``key`` in ``key_header``: no key
    header when ``key`` is None, no body for GET and HEAD."""
    all_headers = dict(headers or {})
    if key is not None:
        all_headers[key_header] = key
    if method in ("get", "head"):
        return method, (), {"headers": all_headers}
    body = data if isinstance(data, bytes | str) else json.dumps(data)
    return method, (body,), {"content_type": "application/json", "headers": all_headers}


def send(client: Client, url: str, *args: Any, **options: Any) -> Response:
    """``send(client, url, data=ORDER, key=KEY, *, method="post", headers=None,
    key_header="Idempotency-Key")``: the request :func:`request_call` describes."""
    method, call_args, call_kwargs = request_call(*args, **options)
    response: Response = getattr(client, method)(url, *call_args, **call_kwargs)
    return response


async def asend(client: AsyncClient, url: str, *args: Any, **options: Any) -> AsyncResponse:
    """:func:`send` through the async test client, with the same arguments."""
    method, call_args, call_kwargs = request_call(*args, **options)
    response: AsyncResponse = await getattr(client, method)(url, *call_args, **call_kwargs)
    return response


# -- answers -----------------------------------------------------------------------------------


def replayed(response: HttpResponseBase) -> bool:
    return response.headers.get("Idempotent-Replayed") == "true"


def problem(response: HttpResponse, status: int, code: str) -> dict[str, Any]:
    """Assert that ``response`` is the problem document ``code`` with ``status``; return it."""
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    document: dict[str, Any] = json.loads(response.content)
    assert document["status"] == status
    assert document["code"] == code
    return document


def orders() -> int:
    """How many orders the views created: how many times they ran."""
    count: int = Order.objects.count()
    return count


async def aorders() -> int:
    count: int = await Order.objects.acount()
    return count


# -- views and the functions options take --------------------------------------------------------


def order_data(request: HttpRequest) -> dict[str, Any]:
    """The JSON object in the request body; empty if the body is not one."""
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _order_fields(request: HttpRequest) -> dict[str, Any]:
    data = order_data(request)
    return {"item": str(data.get("item", "coffee")), "quantity": int(data.get("quantity", 1))}


def _created(order: Order) -> HttpResponse:
    """201 with the order, like an API: representation headers and a request id."""
    response = JsonResponse({"id": order.pk, "item": order.item, "quantity": order.quantity})
    response.status_code = 201
    response["Location"] = f"/orders/{order.pk}/"
    response["Content-Location"] = f"/orders/{order.pk}/"
    response["ETag"] = f'"order-{order.pk}"'
    response["Link"] = f'</orders/{order.pk}/receipt/>; rel="receipt"'
    response["Last-Modified"] = http_date(1_700_000_000 + order.pk)
    response["X-Request-Id"] = f"req-{order.pk}"
    return response


def create_order(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    """Create the order in the JSON body (item, quantity) and answer 201."""
    return _created(Order.objects.create(**_order_fields(request)))


async def acreate_order(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    """:func:`create_order` as an async view."""
    return _created(await Order.objects.acreate(**_order_fields(request)))


def _next_status(remaining: list[int]) -> int:
    return remaining.pop(0) if remaining else 201


def answering(*statuses: int) -> View:
    """A view that creates an order per run and answers the statuses in turn, then 201."""
    remaining = list(statuses)

    def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        order = Order.objects.create(item="tea")
        status = _next_status(remaining)
        return JsonResponse({"id": order.pk, "status": status}, status=status)

    return view


def aanswering(*statuses: int) -> AsyncView:
    """:func:`answering` as an async view."""
    remaining = list(statuses)

    async def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        order = await Order.objects.acreate(item="tea")
        status = _next_status(remaining)
        return JsonResponse({"id": order.pk, "status": status}, status=status)

    return view


def counting(runs: list[int]) -> View:
    """A view that touches no database: it adds to ``runs`` each time it runs
    and answers 201 with ``{"id": <runs so far>}``."""

    def view(request: HttpRequest) -> HttpResponse:
        runs.append(1)
        return JsonResponse({"id": len(runs)}, status=201)

    return view


def acounting(runs: list[int]) -> AsyncView:
    """:func:`counting` as an async view."""

    async def view(request: HttpRequest) -> HttpResponse:
        runs.append(1)
        return JsonResponse({"id": len(runs)}, status=201)

    return view


def external_reference(request: HttpRequest) -> object:
    """A ``key_func`` (GPAS): the transaction id in the JSON body is the key."""
    return order_data(request).get("externalReference")


def only_http_200(response: HttpResponseBase) -> bool:
    """A ``store_if`` (BetLink): only HTTP 200 completes the key."""
    return response.status_code == 200


# -- the same view behind the DRF mixin ----------------------------------------------------------


def drf_view(view: View) -> View:
    """``view`` served by a plain DRF ``APIView`` (no mixin), for every method."""
    return drf_protected(view, {}, mixin=False)


def drf_protected(
    view: View, options: dict[str, Any], *, viewset: bool = False, mixin: bool = True
) -> View:
    """``view`` served by a DRF view with ``IdempotencyMixin`` and ``options``.

    As an ``APIView`` (the default), the options are ``idempotency_*`` class
    attributes and every method calls ``view``. As a ``ModelViewSet``, they
    come from ``get_idempotency_options()``, and its actions (create,
    update, partial_update, destroy, list) call ``view``. ``view`` gets DRF's request,
    which has everything the helpers' views read. Anyone may call it; the
    session authenticates ``client.force_login()`` users. ``mixin=False``:
    the ``APIView`` without the mixin (and without options).
    """
    from rest_framework.authentication import SessionAuthentication
    from rest_framework.permissions import AllowAny
    from rest_framework.views import APIView
    from rest_framework.viewsets import ModelViewSet

    from django_idempotency.rest_framework import IdempotencyMixin

    def handler(self: Any, request: Any, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return view(request, *args, **kwargs)

    attributes: dict[str, Any] = {
        "authentication_classes": [SessionAuthentication],
        "permission_classes": [AllowAny],
    }
    if not viewset:
        for method in ("get", "post", "put", "patch", "delete"):
            attributes[method] = handler
        for name, value in options.items():
            attributes[f"idempotency_{name}"] = value
        bases = (IdempotencyMixin, APIView) if mixin else (APIView,)
        return type("Endpoint", bases, attributes).as_view()  # type: ignore[no-any-return]

    actions = {"get": "list", "post": "create", "put": "update", "patch": "partial_update"}
    actions["delete"] = "destroy"
    for action in actions.values():
        attributes[action] = handler
    attributes["get_idempotency_options"] = lambda self: dict(options)
    attributes["queryset"] = Order.objects.none()
    endpoints = type("Endpoints", (IdempotencyMixin, ModelViewSet), attributes)
    return endpoints.as_view(actions)  # type: ignore[no-any-return]


# -- claims made on the store directly -----------------------------------------------------------


def in_flight_claim(
    url: str,
    data: Any = ORDER,
    key: str = KEY,
    *,
    lease: float = 3600.0,
    scope: str | None = None,
    storage: BaseStorage | None = None,
) -> tuple[RequestKey, str]:
    """Claim ``key`` through ``storage`` (the database store by default) as an
    anonymous POST of ``data`` to ``url`` would: a first request still running,
    or, once ``lease`` has passed, one whose worker died without completing.
    ``scope`` replaces the default scope."""
    request = RequestFactory().post(url, json.dumps(data), content_type="application/json")
    request.resolver_match = resolve(url)
    request.user = AnonymousUser()
    request_key = RequestKey(
        scope=default_scope(request) if scope is None else scope,
        key=key,
        fingerprint=request_fingerprint(request),
    )
    claim = (storage or DatabaseStorage()).claim(request_key, ttl=3600, lease=lease)
    assert claim.token is not None
    return request_key, claim.token


def new_key(*, fingerprint: str = "fp-a", scope: str = "user:1|orders/") -> RequestKey:
    """A key never used before in this test run."""
    return RequestKey(scope=scope, key=uuid.uuid4().hex, fingerprint=fingerprint)


def claim_token(
    storage: BaseStorage, key: RequestKey, *, ttl: float = TTL, lease: float = LEASE
) -> str:
    """Claim ``key`` and return the token, failing the test if the claim was not won."""
    claim = storage.claim(key, ttl=ttl, lease=lease)
    assert claim.claimed, f"expected to win the claim, got {claim!r}"
    assert claim.token is not None
    return claim.token


# -- holding a request in flight ---------------------------------------------------------------


class Gate:
    """Wraps a handler so that its first run waits, in its thread, until the
    test releases it; later runs pass."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.runs = 0
        self._lock = threading.Lock()

    def __call__(self, handler: View) -> View:
        def gated(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
            with self._lock:
                self.runs += 1
                first = self.runs == 1
            if first:
                self.entered.set()
                assert self.release.wait(10), "the test never released the first request"
            return handler(request, **kwargs)

        return gated


class AsyncGate:
    """:class:`Gate` for async handlers: the first run waits on the event loop."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.runs = 0

    def __call__(self, handler: AsyncView) -> AsyncView:
        async def gated(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
            self.runs += 1
            if self.runs == 1:
                self.entered.set()
                await asyncio.wait_for(self.release.wait(), 10)
            return await handler(request, **kwargs)

        return gated


class InBackground:
    """A request sent from another thread, with its own client and connection."""

    def __init__(self, send_request: Callable[[Client], Response]) -> None:
        self._send = send_request
        self._response: Response | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._response = self._send(Client())
        except BaseException as exc:
            self._error = exc
        finally:
            connections.close_all()

    def result(self) -> Response:
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the request did not finish"
        if self._error is not None:
            raise self._error
        assert self._response is not None
        return self._response
