"""An adapter of another framework, built on the public contract alone.

``demo.rpc`` is a small JSON-RPC framework that knows nothing of
idempotency; ``demo.rpc_idempotency`` is its adapter, the one shown in
``docs/howto/other-frameworks.rst``. Through it, a method runs once per key,
retries replay it, and this package's answers come in the framework's own
error format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.test import AsyncClient, Client, RequestFactory
from helpers import asend, in_flight_claim, orders, replayed, send

from demo.models import Order
from demo.rpc_idempotency import Idempotent
from django_idempotency import decorators
from django_idempotency.conf import OptionError
from django_idempotency.decorators import ViewAdapter, idempotent, register_adapter
from django_idempotency.engine import Idempotency
from django_idempotency.models import IdempotencyKey

URL = "/rpc/"
CREATE = {"method": "orders.create", "params": {"item": "tea", "quantity": 2}}


def rpc_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status
    assert json.loads(response.content)["error"]["code"] == code


@pytest.mark.django_db
def test_a_method_runs_once_and_its_retry_replays_byte_for_byte(client: Client) -> None:
    first = send(client, URL, CREATE)
    retry = send(client, URL, CREATE)

    assert first.status_code == 200
    assert json.loads(first.content)["result"]["item"] == "tea"
    assert replayed(retry)
    assert (retry.status_code, retry.content) == (200, first.content)
    assert retry["Content-Type"] == first["Content-Type"]
    assert orders() == 1


@pytest.mark.django_db
def test_the_packages_answers_come_in_the_frameworks_error_format(client: Client) -> None:
    rpc_error(send(client, URL, CREATE, key=None), 400, "idempotency_key_missing")
    send(client, URL, CREATE)
    changed = {"method": "orders.create", "params": {"item": "tea", "quantity": 3}}

    rpc_error(send(client, URL, changed), 422, "idempotency_key_mismatch")
    assert orders() == 1


@pytest.mark.django_db
def test_a_call_still_running_is_answered_with_a_conflict(client: Client) -> None:
    in_flight_claim(URL, CREATE)

    response = send(client, URL, CREATE)

    rpc_error(response, 409, "idempotency_key_in_use")
    assert response["Retry-After"] == "1"
    assert orders() == 0


@pytest.mark.django_db
def test_a_method_that_raises_releases_its_key(client: Client) -> None:
    failing = {"method": "orders.create_failing", "params": {}}
    client.raise_request_exception = False

    assert send(client, URL, failing).status_code == 500
    assert not IdempotencyKey.objects.exists()
    assert send(client, URL, failing).status_code == 500
    assert orders() == 2  # the retry ran again: nothing was stored for it


@pytest.mark.django_db
def test_methods_without_the_adapter_are_left_alone(client: Client) -> None:
    response = send(client, URL, {"method": "orders.count"}, key=None)

    assert json.loads(response.content) == {"result": 0}
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_the_async_twins(async_client: AsyncClient) -> None:
    call = {"method": "orders.create_async", "params": {"item": "tea"}}

    first = await asend(async_client, "/async/rpc/", call)
    retry = await asend(async_client, "/async/rpc/", call)

    assert first.status_code == 200
    assert replayed(retry)
    assert retry.content == first.content
    assert await Order.objects.acount() == 1


def test_its_options_are_checked_when_the_method_is_defined() -> None:
    with pytest.raises(OptionError, match=r"Idempotent\(ttl=\.\.\.\)"):
        Idempotent(ttl=-1)
    with pytest.raises(TypeError, match=r"Did you mean Idempotent\(required=\.\.\.\)\?"):
        Idempotent(requried=True)


# -- making @idempotent understand a framework: ViewAdapter ------------------------------------


class FrameworkRequest:
    """A framework's own request, which wraps Django's (as DRF's does)."""

    def __init__(self, request: HttpRequest) -> None:
        self.django_request = request


class FrameworkAdapter(ViewAdapter):
    """Runs a decorated function that the framework calls with its request."""

    request_class = FrameworkRequest

    def __init__(self) -> None:
        self.handled: list[FrameworkRequest] = []

    def handle(
        self, protection: Idempotency, request: Any, call: Callable[[], HttpResponseBase]
    ) -> HttpResponseBase:
        self.handled.append(request)
        return protection.handle(request.django_request, call)


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> FrameworkAdapter:
    """A FrameworkAdapter, registered for this test only."""
    monkeypatch.setattr(decorators, "_adapters", list(decorators._adapters))
    monkeypatch.setattr(decorators, "_handled_requests", decorators._handled_requests)
    registered = FrameworkAdapter()
    register_adapter(registered)
    register_adapter(FrameworkAdapter())  # one per adapter class: ignored
    return registered


@pytest.mark.django_db
def test_a_registered_adapter_runs_the_frameworks_requests(adapter: FrameworkAdapter) -> None:
    @idempotent(scope_func=lambda request: "framework")
    def create(request: Any) -> HttpResponseBase:
        order = Order.objects.create(item="tea", quantity=1)
        return JsonResponse({"id": order.pk}, status=201)

    def framework_request() -> FrameworkRequest:
        django_request = RequestFactory().post("/", b"{}", content_type="application/json")
        django_request.META["HTTP_IDEMPOTENCY_KEY"] = "k"
        return FrameworkRequest(django_request)

    first = create(framework_request())
    retry = create(framework_request())

    assert len(adapter.handled) == 2
    assert (first.status_code, replayed(first)) == (201, False)
    assert (retry.status_code, replayed(retry)) == (201, True)
    assert retry.content == first.content
    assert orders() == 1
    assert [type(a) for a in decorators._adapters].count(FrameworkAdapter) == 1
