"""What clients of an ``@idempotent`` view see: first runs, replays, refusals,
concurrent duplicates, expiry, abandoned claims, outcomes, methods, scopes,
signals and logs.

Every request goes through Django's whole request handling against the
database store; counting ``demo.models.Order`` rows shows whether a view ran.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from asgiref.sync import sync_to_async
from django.dispatch import Signal
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.test import Client
from django.utils.decorators import method_decorator
from django.views import View
from factories import UserFactory
from helpers import (
    KEY,
    ORDER,
    Gate,
    InBackground,
    answering,
    create_order,
    in_flight_claim,
    orders,
    problem,
    replayed,
    send,
)

from demo.models import Order
from django_idempotency import signals
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyKey, State
from django_idempotency.responses import StoredResponse
from django_idempotency.storage import DatabaseStorage, RequestKey

if TYPE_CHECKING:
    pass

Handler = Callable[..., HttpResponseBase]


# -- views -------------------------------------------------------------------------------


def as_async(handler: Handler) -> Callable[..., Any]:
    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return await sync_to_async(handler)(request, *args, **kwargs)

    return view


def as_class(handler: Handler, options: dict[str, Any]) -> Callable[..., Any]:
    @method_decorator(idempotent(**options), name="dispatch")
    class Endpoint(View):
        def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            return handler(request, **kwargs)

        post = put = patch = delete = options = get

    return Endpoint.as_view()


@pytest.fixture(params=["function", "async", "class"])
def protect(request: pytest.FixtureRequest) -> Callable[..., Callable[..., Any]]:
    """``protect(handler, **options)``: the handler as a protected view of one kind:
    a sync function view, an async one, or a class-based view (method_decorator)."""
    kind = request.param

    def make(handler: Handler, **options: Any) -> Callable[..., Any]:
        if kind == "function":
            return idempotent(**options)(handler)
        if kind == "async":
            return idempotent(**options)(as_async(handler))
        return as_class(handler, options)

    return make


# -- requests ----------------------------------------------------------------------------

REPRESENTATION_HEADERS = ("Content-Type", "Location", "Content-Location", "ETag", "Link")


class Listener:
    """Records one signal's sends while connected."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.calls: list[dict[str, Any]] = []
        self.event = threading.Event()

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        self.event.set()


@pytest.fixture
def listen() -> Iterator[Callable[[Signal], Listener]]:
    listeners: list[Listener] = []

    def connect(signal: Signal) -> Listener:
        listener = Listener(signal)
        signal.connect(listener, weak=False)
        listeners.append(listener)
        return listener

    yield connect
    for listener in listeners:
        listener.signal.disconnect(listener)


# -- first request and replays -----------------------------------------------------------


@pytest.mark.django_db
class TestReplay:
    def test_first_request_runs_the_view_and_stores_its_response(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any]
    ) -> None:
        url = serve(protect(create_order))

        response = send(client, url)

        assert response.status_code == 201
        assert response.json()["item"] == "espresso"
        assert "Idempotent-Replayed" not in response.headers
        assert orders() == 1
        row = IdempotencyKey.objects.get()
        assert row.key == KEY
        assert row.state == State.COMPLETED
        assert row.response_status == 201
        assert bytes(row.response_body) == response.content

    def test_retry_replays_status_body_and_representation_headers(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any]
    ) -> None:
        url = serve(protect(create_order))
        first = send(client, url)

        retry = send(client, url)

        assert retry.status_code == 201
        assert retry.content == first.content
        for name in (*REPRESENTATION_HEADERS, "Last-Modified"):
            assert retry[name] == first[name], name
        assert retry["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        assert orders() == 1

    def test_every_retry_replays_the_same_response(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        url = serve(idempotent(create_order))
        first = send(client, url)

        retries = [send(client, url) for _ in range(3)]

        assert [r.content for r in retries] == [first.content] * 3
        assert all(replayed(r) for r in retries)
        assert orders() == 1

    def test_different_keys_are_different_requests(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any]
    ) -> None:
        url = serve(protect(create_order))

        first = send(client, url, key="key-a")
        second = send(client, url, key="key-b")

        assert first.json()["id"] != second.json()["id"]
        assert not replayed(second)
        assert orders() == 2


@pytest.mark.django_db
class TestNested:
    def test_protected_view_calling_another_protected_view(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        inner = idempotent(create_order)

        @idempotent
        def outer(request: HttpRequest) -> HttpResponseBase:
            return inner(request)

        url = serve(outer)

        first = send(client, url)
        retry = send(client, url)

        assert first.status_code == 201
        assert replayed(retry)
        assert retry.content == first.content
        assert orders() == 1
        assert IdempotencyKey.objects.count() == 1

    def test_class_protected_on_dispatch_and_on_its_method(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        @method_decorator(idempotent, name="dispatch")
        class Orders(View):
            @method_decorator(idempotent(required=True))
            def post(self, request: HttpRequest) -> HttpResponseBase:
                return create_order(request)

        url = serve(Orders.as_view())

        first = send(client, url)
        retry = send(client, url)

        assert first.status_code == 201
        assert replayed(retry)
        assert orders() == 1


# -- the same key with another request -------------------------------------------------------


@pytest.mark.django_db
class TestMismatch:
    @pytest.mark.parametrize(
        ("first", "second"),
        [
            pytest.param(
                ("post", "/orders/1/", ORDER),
                ("post", "/orders/1/", {**ORDER, "quantity": 3}),
                id="body",
            ),
            pytest.param(("post", "/orders/1/", ORDER), ("post", "/orders/2/", ORDER), id="path"),
            pytest.param(
                ("post", "/orders/1/?currency=EUR", ORDER),
                ("post", "/orders/1/?currency=USD", ORDER),
                id="query",
            ),
            pytest.param(("post", "/orders/1/", ORDER), ("put", "/orders/1/", ORDER), id="method"),
        ],
    )
    def test_same_key_with_another_request_is_refused(
        self,
        client: Client,
        serve: Callable[..., str],
        protect: Callable[..., Any],
        first: tuple[str, str, Any],
        second: tuple[str, str, Any],
    ) -> None:
        serve(protect(create_order), "orders/<int:pk>/")
        method, url, data = first
        assert send(client, url, data, method=method).status_code == 201

        method, url, data = second
        response = send(client, url, data, method=method)

        document = problem(response, 422, "idempotency_key_mismatch")
        assert document["detail"]
        assert not replayed(response)
        assert orders() == 1

    def test_mismatch_does_not_spoil_the_key_for_the_original_request(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        url = serve(idempotent(create_order))
        first = send(client, url)
        send(client, url, {"item": "something else"})

        retry = send(client, url)

        assert replayed(retry)
        assert retry.content == first.content
        assert orders() == 1


# -- concurrent duplicates -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
class TestInFlight:
    def test_duplicate_while_the_first_runs_gets_409_and_does_not_run(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any], gate: Gate
    ) -> None:
        url = serve(protect(gate(create_order)))
        first = InBackground(lambda c: send(c, url))
        assert gate.entered.wait(10)

        duplicate = send(client, url)

        problem(duplicate, 409, "idempotency_key_in_use")
        assert duplicate["Retry-After"] == "1"
        assert gate.runs == 1
        assert orders() == 0
        gate.release.set()
        assert first.result().status_code == 201
        assert orders() == 1
        assert gate.runs == 1

    def test_the_first_request_stores_its_response_after_a_conflict(
        self, client: Client, serve: Callable[..., str], gate: Gate
    ) -> None:
        url = serve(idempotent(gate(create_order)))
        first = InBackground(lambda c: send(c, url))
        assert gate.entered.wait(10)
        assert send(client, url).status_code == 409
        gate.release.set()
        original = first.result()

        retry = send(client, url)

        assert replayed(retry)
        assert retry.content == original.content
        assert orders() == 1

    def test_on_conflict_423_answers_locked(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any], gate: Gate
    ) -> None:
        url = serve(protect(gate(create_order), on_conflict=423))
        first = InBackground(lambda c: send(c, url))
        assert gate.entered.wait(10)

        duplicate = send(client, url)

        problem(duplicate, 423, "idempotency_key_in_use")
        assert duplicate["Retry-After"] == "1"
        gate.release.set()
        assert first.result().status_code == 201
        assert orders() == 1

    def test_on_conflict_wait_replays_the_first_response_once_it_finishes(
        self,
        serve: Callable[..., str],
        protect: Callable[..., Any],
        gate: Gate,
        listen: Callable[[Signal], Listener],
    ) -> None:
        conflict = listen(signals.key_conflict)
        url = serve(protect(gate(create_order), on_conflict="wait", wait_timeout=10))
        first = InBackground(lambda c: send(c, url))
        assert gate.entered.wait(10)
        duplicate = InBackground(lambda c: send(c, url))
        # The duplicate has seen the first still running and is waiting for it.
        assert conflict.event.wait(10)

        gate.release.set()
        original, waited = first.result(), duplicate.result()

        assert original.status_code == 201
        assert not replayed(original)
        assert waited.status_code == 201
        assert waited.content == original.content
        assert waited["Location"] == original["Location"]
        assert replayed(waited)
        assert gate.runs == 1
        assert orders() == 1

    def test_on_conflict_wait_answers_409_when_wait_timeout_passes(
        self, client: Client, serve: Callable[..., str], gate: Gate
    ) -> None:
        url = serve(idempotent(gate(create_order), on_conflict="wait", wait_timeout=0.3))
        first = InBackground(lambda c: send(c, url))
        assert gate.entered.wait(10)

        duplicate = send(client, url)

        problem(duplicate, 409, "idempotency_key_in_use")
        assert duplicate["Retry-After"] == "1"
        assert gate.runs == 1
        gate.release.set()
        assert first.result().status_code == 201
        assert orders() == 1

    def test_wait_runs_the_view_when_the_first_request_fails(
        self,
        serve: Callable[..., str],
        gate: Gate,
        listen: Callable[[Signal], Listener],
    ) -> None:
        conflict = listen(signals.key_conflict)
        url = serve(idempotent(gate(answering(503, 201)), on_conflict="wait", wait_timeout=10))
        first = InBackground(lambda c: send(c, url))
        assert gate.entered.wait(10)
        duplicate = InBackground(lambda c: send(c, url))
        assert conflict.event.wait(10)

        gate.release.set()

        assert first.result().status_code == 503
        waited = duplicate.result()
        assert waited.status_code == 201
        assert not replayed(waited)
        assert gate.runs == 2
        assert orders() == 2

    def test_demo_slow_endpoint_waits_for_concurrent_duplicates(self) -> None:
        requests = [
            InBackground(lambda c: send(c, "/slow/orders/?delay=0.3", key="slow-1"))
            for _ in range(3)
        ]

        responses = [request.result() for request in requests]

        assert [r.status_code for r in responses] == [201, 201, 201]
        assert len({r.content for r in responses}) == 1
        assert sum(not replayed(r) for r in responses) == 1
        assert orders() == 1

    def test_demo_slow_conflict_endpoint_answers_409_to_a_concurrent_duplicate(
        self, client: Client, listen: Callable[[Signal], Listener]
    ) -> None:
        claimed = listen(signals.key_claimed)
        first = InBackground(lambda c: send(c, "/slow/orders/conflict/?delay=0.5", key="slow-2"))
        assert claimed.event.wait(10)

        duplicate = send(client, "/slow/orders/conflict/?delay=0.5", key="slow-2")

        problem(duplicate, 409, "idempotency_key_in_use")
        assert first.result().status_code == 201
        assert orders() == 1


# -- expiry and abandoned claims -----------------------------------------------------------


@pytest.mark.django_db
def test_after_ttl_the_key_is_new_again(client: Client, serve: Callable[..., str]) -> None:
    url = serve(idempotent(create_order, ttl=1, lock_timeout=0.5))
    first = send(client, url)
    assert replayed(send(client, url))

    time.sleep(1.2)
    again = send(client, url)

    assert again.status_code == 201
    assert not replayed(again)
    assert again.json()["id"] != first.json()["id"]
    assert orders() == 2
    assert IdempotencyKey.objects.count() == 1


@pytest.mark.django_db
def test_after_ttl_the_key_may_carry_another_request(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(create_order, ttl=1, lock_timeout=0.5))
    send(client, url)
    assert send(client, url, {"item": "latte"}).status_code == 422

    time.sleep(1.2)
    response = send(client, url, {"item": "latte"})

    assert response.status_code == 201
    assert response.json()["item"] == "latte"
    assert orders() == 2


@pytest.mark.django_db(transaction=True)
def test_claim_outliving_lock_timeout_is_taken_over_and_the_late_completion_refused(
    client: Client, serve: Callable[..., str], gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    # No renewals (max_lock_time not above lock_timeout): the lease runs out
    # while the view runs, as a hung view's does once renewals stop.
    url = serve(idempotent(gate(create_order), lock_timeout=1, max_lock_time=1))
    late = InBackground(lambda c: send(c, url))
    assert gate.entered.wait(10)
    assert send(client, url).status_code == 409

    time.sleep(1.2)
    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        takeover = send(client, url)
        gate.release.set()
        late_response = late.result()

    assert takeover.status_code == 201
    assert not replayed(takeover)
    # The late worker's client still gets its own response, but it is not stored.
    assert late_response.status_code == 201
    assert late_response.json()["id"] != takeover.json()["id"]
    assert orders() == 2
    retry = send(client, url)
    assert replayed(retry)
    assert retry.content == takeover.content
    assert bytes(IdempotencyKey.objects.get().response_body) == takeover.content
    assert any(
        record.levelno == logging.WARNING and "not stored" in record.getMessage()
        for record in caplog.records
    )


@pytest.mark.django_db
def test_claim_of_a_dead_worker_is_taken_over_after_its_lease(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(create_order))
    request_key, dead_token = in_flight_claim(url, ORDER, KEY, lease=1)
    problem(send(client, url), 409, "idempotency_key_in_use")
    assert orders() == 0

    time.sleep(1.2)
    takeover = send(client, url)

    assert takeover.status_code == 201
    assert orders() == 1
    # The dead worker wakes up: its completion and its release are refused.
    storage = DatabaseStorage()
    assert not storage.complete(request_key, dead_token, StoredResponse(status=200, body=b"late"))
    assert not storage.release(request_key, dead_token)
    retry = send(client, url)
    assert replayed(retry)
    assert retry.status_code == 201
    assert retry.content == takeover.content


@pytest.mark.django_db
def test_abandoned_claim_is_not_taken_over_by_another_request(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(create_order))
    in_flight_claim(url, ORDER, KEY, lease=0.5)
    time.sleep(0.7)

    response = send(client, url, {"item": "something else"})

    problem(response, 422, "idempotency_key_mismatch")
    assert orders() == 0


# -- which outcomes are stored ---------------------------------------------------------------


@pytest.mark.django_db
class TestOutcomes:
    def test_exception_releases_the_key_and_propagates(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any]
    ) -> None:
        runs: list[int] = []

        def flaky(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
            runs.append(1)
            if len(runs) == 1:
                raise ConnectionError("payment provider timed out")
            return create_order(request)

        url = serve(protect(flaky))

        with pytest.raises(ConnectionError, match="payment provider timed out"):
            send(client, url)
        assert not IdempotencyKey.objects.exists()
        retry = send(client, url)

        assert retry.status_code == 201
        assert not replayed(retry)
        assert len(runs) == 2
        assert orders() == 1

    @pytest.mark.parametrize("status", [500, 502, 503])
    def test_server_error_is_not_stored(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any], status: int
    ) -> None:
        url = serve(protect(answering(status, 201)))

        assert send(client, url).status_code == status
        assert not IdempotencyKey.objects.exists()
        retry = send(client, url)

        assert retry.status_code == 201
        assert not replayed(retry)
        assert orders() == 2

    @pytest.mark.parametrize("status", [400, 402, 404, 409])
    def test_client_error_is_stored_and_replayed(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any], status: int
    ) -> None:
        url = serve(protect(answering(status, 201)))
        first = send(client, url)

        retry = send(client, url)

        assert retry.status_code == status
        assert retry.content == first.content
        assert replayed(retry)
        assert orders() == 1

    def test_store_if_decides_what_is_stored(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any]
    ) -> None:
        url = serve(protect(answering(402, 200, 201), store_if=lambda r: r.status_code == 200))

        assert send(client, url).status_code == 402
        assert send(client, url).status_code == 200
        retry = send(client, url)

        assert retry.status_code == 200
        assert replayed(retry)
        assert orders() == 2


# -- methods and requests without a key ------------------------------------------------------


@pytest.mark.django_db
class TestMethods:
    @pytest.mark.parametrize("method", ["get", "head", "options"])
    def test_safe_methods_pass_through_unprotected(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any], method: str
    ) -> None:
        url = serve(protect(create_order))

        first = send(client, url, method=method)
        second = send(client, url, method=method)

        assert first.status_code == second.status_code == 201
        assert not replayed(second)
        assert orders() == 2
        assert not IdempotencyKey.objects.exists()

    @pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
    def test_unsafe_methods_are_protected_by_default(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any], method: str
    ) -> None:
        url = serve(protect(create_order))

        send(client, url, method=method)
        retry = send(client, url, method=method)

        assert replayed(retry)
        assert orders() == 1

    def test_methods_option_leaves_other_methods_unprotected(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any]
    ) -> None:
        url = serve(protect(create_order, methods=("POST",)))

        send(client, url, method="put")
        put_again = send(client, url, method="put")
        send(client, url, key="other")
        post_again = send(client, url, key="other")

        assert not replayed(put_again)
        assert replayed(post_again)
        assert orders() == 3


@pytest.mark.django_db
class TestWithoutKey:
    def test_request_without_key_runs_unprotected_each_time(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any]
    ) -> None:
        url = serve(protect(create_order))

        first = send(client, url, key=None)
        second = send(client, url, key=None)

        assert first.status_code == second.status_code == 201
        assert not replayed(second)
        assert orders() == 2
        assert not IdempotencyKey.objects.exists()

    def test_required_key_missing_is_refused(
        self, client: Client, serve: Callable[..., str], protect: Callable[..., Any]
    ) -> None:
        url = serve(protect(create_order, required=True))

        response = send(client, url, key=None)

        problem(response, 400, "idempotency_key_missing")
        assert orders() == 0
        assert send(client, url).status_code == 201


@pytest.mark.django_db
class TestDemoEndpoints:
    def test_demo_class_based_view_requires_a_key(self, client: Client) -> None:
        problem(send(client, "/cbv/orders/", key=None), 400, "idempotency_key_missing")

        first = send(client, "/cbv/orders/")
        retry = send(client, "/cbv/orders/")

        assert first.status_code == 201
        assert replayed(retry)
        assert retry.content == first.content
        assert orders() == 1

    @pytest.mark.parametrize("url", ["/orders/", "/async/orders/"])
    def test_demo_endpoints_replay(self, client: Client, url: str) -> None:
        first = send(client, url)
        retry = send(client, url)

        assert first.status_code == 201
        assert retry.content == first.content
        assert retry["Location"] == first["Location"]
        assert replayed(retry)
        assert orders() == 1

    def test_demo_get_passes_through(self, client: Client) -> None:
        send(client, "/orders/")

        listing = send(client, "/orders/", method="get")

        assert listing.json() == {"orders": 1}
        assert not replayed(listing)


# -- scope -----------------------------------------------------------------------------------


@pytest.mark.django_db
class TestScope:
    @pytest.fixture(params=["function", "async", "class"])
    def view(self, request: pytest.FixtureRequest) -> Callable[..., Any]:
        def whose(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            order = Order.objects.create(item=f"for {request.user}")
            return JsonResponse({"id": order.pk, "user": str(request.user)}, status=201)

        if request.param == "function":
            return idempotent(whose)
        if request.param == "async":
            return idempotent(as_async(whose))
        return as_class(whose, {})

    def test_same_key_from_two_users_never_meets(
        self, serve: Callable[..., str], view: Callable[..., Any]
    ) -> None:
        url = serve(view)
        alice, bob = Client(), Client()
        alice.force_login(UserFactory(username="alice"))
        bob.force_login(UserFactory(username="bob"))

        for_alice = send(alice, url)
        for_bob = send(bob, url)

        assert for_alice.json()["user"] == "alice"
        assert for_bob.status_code == 201
        assert for_bob.json()["user"] == "bob"
        assert for_bob.content != for_alice.content
        assert not replayed(for_bob)
        assert orders() == 2
        # Each keeps their own stored response.
        assert send(alice, url).content == for_alice.content
        assert send(bob, url).content == for_bob.content
        assert orders() == 2

    def test_user_cannot_see_another_users_response_with_another_body(
        self, serve: Callable[..., str], view: Callable[..., Any]
    ) -> None:
        url = serve(view)
        alice, bob = Client(), Client()
        alice.force_login(UserFactory())
        bob.force_login(UserFactory())
        send(alice, url)

        response = send(bob, url, {"item": "not alice's"})

        assert response.status_code == 201
        assert not replayed(response)

    def test_anonymous_requests_share_one_scope(
        self, serve: Callable[..., str], view: Callable[..., Any]
    ) -> None:
        url = serve(view)
        first = send(Client(), url)

        retry = send(Client(), url)

        assert replayed(retry)
        assert retry.content == first.content
        assert orders() == 1

    def test_logged_in_user_and_anonymous_never_meet(
        self, client: Client, serve: Callable[..., str], view: Callable[..., Any]
    ) -> None:
        url = serve(view)
        send(Client(), url)
        client.force_login(UserFactory())

        response = send(client, url)

        assert not replayed(response)
        assert orders() == 2

    def test_same_key_on_two_endpoints_never_meets(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        payments = serve(idempotent(create_order), "payments/")
        refunds = serve(idempotent(create_order), "refunds/")

        first = send(client, payments)
        second = send(client, refunds)

        assert first.status_code == second.status_code == 201
        assert not replayed(second)
        assert orders() == 2


# -- signals and logs ------------------------------------------------------------------------

SIGNALS = (
    "key_claimed",
    "key_completed",
    "key_replayed",
    "key_conflict",
    "key_mismatch",
    "key_released",
)


@pytest.fixture
def sent(listen: Callable[[Signal], Listener]) -> dict[str, Listener]:
    return {name: listen(getattr(signals, name)) for name in SIGNALS}


def assert_sent_with(listener: Listener, url: str) -> None:
    [call] = listener.calls
    assert isinstance(call["request"], HttpRequest)
    assert call["request"].path == url
    assert isinstance(call["key"], RequestKey)
    assert call["key"].key == KEY


def counts(sent: dict[str, Listener]) -> dict[str, int]:
    return {name: len(listener.calls) for name, listener in sent.items() if listener.calls}


@pytest.mark.django_db
class TestSignals:
    def test_first_request_sends_claimed_then_completed(
        self, client: Client, serve: Callable[..., str], sent: dict[str, Listener]
    ) -> None:
        seen_orders: dict[str, int] = {}
        signals.key_claimed.connect(
            lambda **kw: seen_orders.setdefault("claimed", orders()), weak=False, dispatch_uid="c"
        )
        signals.key_completed.connect(
            lambda **kw: seen_orders.setdefault("completed", orders()),
            weak=False,
            dispatch_uid="d",
        )
        try:
            url = serve(idempotent(create_order))
            send(client, url)
        finally:
            signals.key_claimed.disconnect(dispatch_uid="c")
            signals.key_completed.disconnect(dispatch_uid="d")

        assert counts(sent) == {"key_claimed": 1, "key_completed": 1}
        # Claimed before the view ran, completed after.
        assert seen_orders == {"claimed": 0, "completed": 1}
        for name in ("key_claimed", "key_completed"):
            assert_sent_with(sent[name], url)

    def test_replay_sends_replayed(
        self, client: Client, serve: Callable[..., str], sent: dict[str, Listener]
    ) -> None:
        url = serve(idempotent(create_order))
        send(client, url)
        sent["key_claimed"].calls.clear()
        sent["key_completed"].calls.clear()

        send(client, url)

        assert counts(sent) == {"key_replayed": 1}
        assert_sent_with(sent["key_replayed"], url)

    def test_mismatch_sends_mismatch(
        self, client: Client, serve: Callable[..., str], sent: dict[str, Listener]
    ) -> None:
        url = serve(idempotent(create_order))
        send(client, url)
        sent["key_claimed"].calls.clear()
        sent["key_completed"].calls.clear()

        send(client, url, {"item": "other"})

        assert counts(sent) == {"key_mismatch": 1}
        assert_sent_with(sent["key_mismatch"], url)
        assert sent["key_mismatch"].calls[0]["request"].body == b'{"item": "other"}'

    def test_conflict_sends_conflict(
        self, client: Client, serve: Callable[..., str], sent: dict[str, Listener]
    ) -> None:
        url = serve(idempotent(create_order))
        in_flight_claim(url, ORDER, KEY, lease=60)

        send(client, url)

        assert counts(sent) == {"key_conflict": 1}
        assert_sent_with(sent["key_conflict"], url)

    def test_waiting_duplicate_sends_conflict_once(
        self, client: Client, serve: Callable[..., str], sent: dict[str, Listener]
    ) -> None:
        url = serve(idempotent(create_order, on_conflict="wait", wait_timeout=0.5))
        in_flight_claim(url, ORDER, KEY, lease=60)

        assert send(client, url).status_code == 409

        # One duplicate arrived while the first was running: one signal.
        assert counts(sent) == {"key_conflict": 1}

    @pytest.mark.parametrize("failure", ["exception", "server error"])
    def test_failure_sends_released(
        self, client: Client, serve: Callable[..., str], sent: dict[str, Listener], failure: str
    ) -> None:
        def failing(request: HttpRequest) -> HttpResponse:
            if failure == "exception":
                raise RuntimeError("boom")
            return HttpResponse(status=500)

        url = serve(idempotent(failing))

        if failure == "exception":
            with pytest.raises(RuntimeError, match="boom"):
                send(client, url)
        else:
            send(client, url)

        assert counts(sent) == {"key_claimed": 1, "key_released": 1}
        assert_sent_with(sent["key_released"], url)

    def test_unprotected_requests_send_nothing(
        self, client: Client, serve: Callable[..., str], sent: dict[str, Listener]
    ) -> None:
        url = serve(idempotent(create_order))

        send(client, url, key=None)
        send(client, url, method="get")

        assert counts(sent) == {}


@pytest.mark.django_db
def test_logs_never_contain_the_key_but_its_log_id(
    client: Client, serve: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-live-QX7dTz93LmPq"
    url = serve(idempotent(answering(503, 201)), "orders/")
    busy = serve(idempotent(create_order), "busy/")
    in_flight_claim(busy, ORDER, secret, lease=60)
    log_ids = {
        RequestKey(scope=f"anonymous|{route}", key=secret, fingerprint="").log_id
        for route in ("orders/", "busy/")
    }

    with caplog.at_level(logging.DEBUG, logger="django_idempotency"):
        send(client, url, key=secret)  # claimed, released
        send(client, url, key=secret)  # claimed, completed
        send(client, url, key=secret)  # replayed
        send(client, url, {"other": 1}, key=secret)  # mismatch
        send(client, busy, key=secret)  # conflict

    messages = [
        record.getMessage() for record in caplog.records if record.name == "django_idempotency"
    ]
    assert len(messages) >= 7
    assert all(secret not in message for message in messages)
    assert all(any(log_id in message for log_id in log_ids) for message in messages)
    assert all(re.fullmatch(r"[0-9a-f]{16}", log_id) for log_id in log_ids)
