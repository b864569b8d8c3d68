"""``@idempotent`` on async views, driven by the async test client.

Every test here runs on the event loop, as under an ASGI server: the view and
the store are awaited, and concurrent duplicates are coroutines on one loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.test import AsyncClient
from django.utils.decorators import method_decorator
from django.views import View
from factories import UserFactory
from helpers import (
    KEY,
    AsyncGate,
    aanswering,
    acounting,
    acreate_order,
    aorders,
    asend,
    create_order,
    in_flight_claim,
    problem,
    replayed,
)

from demo.models import Order
from demo.views import create_order_async
from django_idempotency import signals
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyKey
from django_idempotency.storage import DatabaseStorage, RequestKey

AsyncHandler = Callable[..., Any]

#: Async views reach the database from another thread: transactional tests.
db = pytest.mark.django_db(transaction=True)

pytestmark = pytest.mark.usefixtures("close_orm_thread_connections")


def as_class(handler: AsyncHandler, **options: Any) -> Callable[..., Any]:
    class Endpoint(View):
        @method_decorator(idempotent(**options))
        async def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            response: HttpResponseBase = await handler(request, **kwargs)
            return response

        @method_decorator(idempotent(**options))
        async def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            response: HttpResponseBase = await handler(request, **kwargs)
            return response

    return Endpoint.as_view()


@pytest.fixture(params=["function", "class"])
def protect(request: pytest.FixtureRequest) -> Callable[..., Callable[..., Any]]:
    """``protect(handler, **options)``: an async function view, or an async
    method of a class-based view decorated through method_decorator."""
    kind = request.param

    def make(handler: AsyncHandler, **options: Any) -> Callable[..., Any]:
        if kind == "function":
            return idempotent(**options)(handler)
        return as_class(handler, **options)

    return make


# -- replays and refusals --------------------------------------------------------------------


@db
async def test_first_request_runs_and_retry_replays(
    async_client: AsyncClient, serve: Callable[..., str], protect: Callable[..., Any]
) -> None:
    url = serve(protect(acreate_order))

    first = await asend(async_client, url)
    retry = await asend(async_client, url)

    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert retry.status_code == 201
    assert retry.content == first.content
    for name in ("Content-Type", "Location", "ETag"):
        assert retry[name] == first[name]
    assert retry["Idempotent-Replayed"] == "true"
    assert await aorders() == 1
    assert await IdempotencyKey.objects.acount() == 1


@db
async def test_mismatch_is_refused_without_running(
    async_client: AsyncClient, serve: Callable[..., str], protect: Callable[..., Any]
) -> None:
    url = serve(protect(acreate_order))
    await asend(async_client, url)

    response = await asend(async_client, url, {"item": "mocha"})

    problem(response, 422, "idempotency_key_mismatch")
    assert await aorders() == 1


@db
async def test_sync_view_served_by_the_async_handler(
    async_client: AsyncClient, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(create_order))

    first = await asend(async_client, url)
    retry = await asend(async_client, url)

    assert retry.content == first.content
    assert replayed(retry)
    assert await aorders() == 1


@db
async def test_demo_async_endpoint_replays(async_client: AsyncClient) -> None:
    first = await asend(async_client, "/async/orders/")
    retry = await asend(async_client, "/async/orders/")

    assert first.status_code == 201
    assert retry.content == first.content
    assert retry["Location"] == first["Location"]
    assert replayed(retry)
    assert await aorders() == 1


@db
async def test_demo_async_endpoint_stays_async_and_is_csrf_exempt() -> None:
    response = await asend(AsyncClient(enforce_csrf_checks=True), "/async/orders/")

    assert inspect.iscoroutinefunction(create_order_async)
    assert response.status_code == 201
    assert await aorders() == 1


# -- concurrent duplicates on one event loop -------------------------------------------------


@db
async def test_duplicate_in_flight_gets_409(
    async_client: AsyncClient,
    serve: Callable[..., str],
    protect: Callable[..., Any],
    gate: AsyncGate,
) -> None:
    url = serve(protect(gate(acreate_order)))
    first = asyncio.create_task(asend(async_client, url))
    await asyncio.wait_for(gate.entered.wait(), 10)

    duplicate = await asend(async_client, url)

    problem(duplicate, 409, "idempotency_key_in_use")
    assert duplicate["Retry-After"] == "1"
    assert gate.runs == 1
    gate.release.set()
    assert (await first).status_code == 201
    assert await aorders() == 1
    assert gate.runs == 1


@db
async def test_duplicate_in_flight_gets_423_when_configured(
    async_client: AsyncClient, serve: Callable[..., str], gate: AsyncGate
) -> None:
    url = serve(idempotent(on_conflict=423)(gate(acreate_order)))
    first = asyncio.create_task(asend(async_client, url))
    await asyncio.wait_for(gate.entered.wait(), 10)

    duplicate = await asend(async_client, url)

    problem(duplicate, 423, "idempotency_key_in_use")
    gate.release.set()
    assert (await first).status_code == 201
    assert await aorders() == 1


@db
async def test_wait_replays_the_first_response(
    async_client: AsyncClient,
    serve: Callable[..., str],
    protect: Callable[..., Any],
    gate: AsyncGate,
) -> None:
    conflict = asyncio.Event()

    def on_conflict(sender: Any, **kwargs: Any) -> None:
        conflict.set()

    signals.key_conflict.connect(on_conflict, weak=False)
    try:
        url = serve(protect(gate(acreate_order), on_conflict="wait", wait_timeout=10))
        first = asyncio.create_task(asend(async_client, url))
        await asyncio.wait_for(gate.entered.wait(), 10)
        duplicate = asyncio.create_task(asend(async_client, url))
        await asyncio.wait_for(conflict.wait(), 10)

        gate.release.set()
        original, waited = await first, await duplicate
    finally:
        signals.key_conflict.disconnect(on_conflict)

    assert original.status_code == 201
    assert waited.status_code == 201
    assert waited.content == original.content
    assert replayed(waited)
    assert not replayed(original)
    assert gate.runs == 1
    assert await aorders() == 1


@db
async def test_wait_gives_up_after_wait_timeout(
    async_client: AsyncClient, serve: Callable[..., str], gate: AsyncGate
) -> None:
    url = serve(idempotent(on_conflict="wait", wait_timeout=0.3)(gate(acreate_order)))
    first = asyncio.create_task(asend(async_client, url))
    await asyncio.wait_for(gate.entered.wait(), 10)

    duplicate = await asend(async_client, url)

    problem(duplicate, 409, "idempotency_key_in_use")
    assert gate.runs == 1
    gate.release.set()
    assert (await first).status_code == 201
    assert await aorders() == 1


@db
async def test_waiting_does_not_block_the_event_loop(
    async_client: AsyncClient, serve: Callable[..., str], gate: AsyncGate
) -> None:
    url = serve(idempotent(on_conflict="wait", wait_timeout=0.6)(gate(acreate_order)))
    first = asyncio.create_task(asend(async_client, url))
    await asyncio.wait_for(gate.entered.wait(), 10)
    duplicate = asyncio.create_task(asend(async_client, url))
    ticks = 0
    while not duplicate.done():
        await asyncio.sleep(0.01)
        ticks += 1

    # The loop kept running other coroutines while the duplicate waited.
    assert ticks >= 10
    assert (await duplicate).status_code == 409
    gate.release.set()
    await first


# -- outcomes --------------------------------------------------------------------------------


@db
async def test_exception_releases_the_key_and_propagates(
    async_client: AsyncClient, serve: Callable[..., str], protect: Callable[..., Any]
) -> None:
    runs: list[int] = []

    async def flaky(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
        runs.append(1)
        if len(runs) == 1:
            raise TimeoutError("wallet did not answer")
        return await acreate_order(request)

    url = serve(protect(flaky))

    with pytest.raises(TimeoutError, match="wallet did not answer"):
        await asend(async_client, url)
    retry = await asend(async_client, url)

    assert retry.status_code == 201
    assert not replayed(retry)
    assert len(runs) == 2


@db
async def test_server_error_is_released_and_client_error_stored(
    async_client: AsyncClient, serve: Callable[..., str], protect: Callable[..., Any]
) -> None:
    url = serve(protect(aanswering(500, 404)))

    assert (await asend(async_client, url)).status_code == 500
    assert (await asend(async_client, url)).status_code == 404
    retry = await asend(async_client, url)

    assert retry.status_code == 404
    assert replayed(retry)
    assert await aorders() == 2


@db
async def test_store_if(async_client: AsyncClient, serve: Callable[..., str]) -> None:
    url = serve(idempotent(store_if=lambda r: r.status_code == 200)(aanswering(201, 200)))

    await asend(async_client, url)
    second = await asend(async_client, url)
    third = await asend(async_client, url)

    assert not replayed(second)
    assert replayed(third)
    assert third.status_code == 200
    assert await aorders() == 2


# -- what passes through ---------------------------------------------------------------------


@db
async def test_get_and_keyless_requests_pass_through(
    async_client: AsyncClient, serve: Callable[..., str], protect: Callable[..., Any]
) -> None:
    url = serve(protect(acreate_order))

    await asend(async_client, url, method="get")
    await asend(async_client, url, method="get")
    await asend(async_client, url, key=None)
    await asend(async_client, url, key=None)

    assert await aorders() == 4
    assert await IdempotencyKey.objects.acount() == 0


@db
async def test_required_key(
    async_client: AsyncClient, serve: Callable[..., str], protect: Callable[..., Any]
) -> None:
    url = serve(protect(acreate_order, required=True))

    problem(await asend(async_client, url, key=None), 400, "idempotency_key_missing")
    assert (await asend(async_client, url)).status_code == 201
    assert await aorders() == 1


@db
async def test_invalid_key(async_client: AsyncClient, serve: Callable[..., str]) -> None:
    url = serve(idempotent(acreate_order))

    problem(await asend(async_client, url, key="a, b"), 400, "idempotency_key_invalid")
    assert await aorders() == 0


# -- expiry and abandoned claims -------------------------------------------------------------


@db
async def test_after_ttl_the_view_runs_again(
    async_client: AsyncClient, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(ttl=1, lock_timeout=0.5)(acreate_order))
    await asend(async_client, url)
    assert replayed(await asend(async_client, url))

    await asyncio.sleep(1.2)
    again = await asend(async_client, url)

    assert not replayed(again)
    assert await aorders() == 2


@db
async def test_dead_workers_claim_is_taken_over_after_its_lease(
    async_client: AsyncClient, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(acreate_order))
    # A lease long enough for the first duplicate to arrive within it on a
    # loaded machine (the suite runs in several processes).
    request_key, token = await sync_to_async(in_flight_claim)(url, lease=2.0)
    assert (await asend(async_client, url)).status_code == 409

    await asyncio.sleep(2.2)
    takeover = await asend(async_client, url)

    assert takeover.status_code == 201
    assert not await DatabaseStorage().arelease(request_key, token)
    retry = await asend(async_client, url)
    assert replayed(retry)
    assert retry.content == takeover.content
    assert await aorders() == 1


# -- scope -----------------------------------------------------------------------------------


@db
async def test_same_key_from_two_users_never_meets(
    serve: Callable[..., str], protect: Callable[..., Any]
) -> None:
    async def whose(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        user = await request.auser()
        order = await Order.objects.acreate(item=f"for {user}")
        return JsonResponse({"id": order.pk, "user": str(user)}, status=201)

    url = serve(protect(whose))
    alice, bob = AsyncClient(), AsyncClient()
    await alice.aforce_login(await sync_to_async(UserFactory)(username="alice"))
    await bob.aforce_login(await sync_to_async(UserFactory)(username="bob"))

    for_alice = await asend(alice, url)
    for_bob = await asend(bob, url)

    assert for_alice.status_code == 201
    assert for_alice.json()["user"] == "alice"
    assert for_bob.status_code == 201
    assert for_bob.json()["user"] == "bob"
    assert not replayed(for_bob)
    retry = await asend(alice, url)
    assert replayed(retry)
    assert retry.content == for_alice.content
    assert await aorders() == 2


# -- signals and the store being down --------------------------------------------------------


@db
async def test_signals_fire_once_each(async_client: AsyncClient, serve: Callable[..., str]) -> None:
    seen: list[tuple[str, str]] = []

    def record(name: str) -> Callable[..., None]:
        def receiver(sender: Any, request: HttpRequest, key: RequestKey, **kwargs: Any) -> None:
            seen.append((name, key.key))

        return receiver

    receivers = {
        signal: record(name)
        for name, signal in (
            ("claimed", signals.key_claimed),
            ("completed", signals.key_completed),
            ("replayed", signals.key_replayed),
            ("mismatch", signals.key_mismatch),
            ("released", signals.key_released),
        )
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver, weak=False)
    try:
        url = serve(idempotent(aanswering(503)))
        await asend(async_client, url)
        await asend(async_client, url)
        await asend(async_client, url)
        await asend(async_client, url, {"other": True})
    finally:
        for signal, receiver in receivers.items():
            signal.disconnect(receiver)

    assert seen == [
        ("claimed", KEY),
        ("released", KEY),
        ("claimed", KEY),
        ("completed", KEY),
        ("replayed", KEY),
        ("mismatch", KEY),
    ]


async def test_store_down_fails_closed(
    async_client: AsyncClient,
    serve: Callable[..., str],
    down_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    url = serve(idempotent(storage=DatabaseStorage(database=down_database))(acounting(runs)))

    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        response = await asend(async_client, url)

    problem(response, 503, "idempotency_storage_unavailable")
    assert response["Retry-After"] == "1"
    assert runs == []
    assert any(r.levelno == logging.ERROR for r in caplog.records)


async def test_store_down_fails_open_when_configured(
    async_client: AsyncClient,
    serve: Callable[..., str],
    down_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    storage = DatabaseStorage(database=down_database)
    url = serve(idempotent(storage=storage, fail_open=True)(acounting(runs)))

    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        first = await asend(async_client, url)
        second = await asend(async_client, url)

    assert first.status_code == second.status_code == 201
    assert not replayed(second)
    assert len(runs) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("fail_open" in r.getMessage() for r in warnings)
