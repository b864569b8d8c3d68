"""The semantics of a protected view, on every store and through every adapter.

The same requests through ``@idempotent`` and through the DRF mixin, on the
database store and on the Redis store, must be answered alike: a store is a
detail of where records live, and an adapter of how a view is declared, never
of what a client gets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import Client
from helpers import create_order, drf_protected, in_flight_claim, orders, problem, replayed, send

from django_idempotency.decorators import idempotent
from django_idempotency.responses import StoredResponse
from django_idempotency.storage import BaseStorage

pytestmark = pytest.mark.django_db(transaction=True)


Protect = Callable[..., str]


@pytest.fixture(params=["decorator", "mixin"])
def protect(
    request: pytest.FixtureRequest, serve: Callable[..., str], store: BaseStorage
) -> Protect:
    """``protect(view, **options)``: the view behind ``@idempotent``, or
    served by a DRF APIView with ``IdempotencyMixin``, on ``store``."""
    if request.param == "mixin":
        pytest.importorskip("rest_framework")

    def mount(view: Callable[..., Any], **options: Any) -> str:
        if request.param == "mixin":
            return serve(drf_protected(view, {"storage": store, **options}))
        return serve(idempotent(storage=store, **options)(view))

    return mount


def test_first_runs_retry_replays(client: Client, protect: Protect) -> None:
    url = protect(create_order)

    first, retry = send(client, url), send(client, url)

    assert first.status_code == 201
    assert not replayed(first)
    assert replayed(retry)
    assert retry.content == first.content
    assert orders() == 1


def test_different_request_same_key_is_refused(client: Client, protect: Protect) -> None:
    url = protect(create_order)
    send(client, url)

    problem(send(client, url, {"item": "tea"}), 422, "idempotency_key_mismatch")
    assert orders() == 1


@pytest.mark.parametrize("status", [409, 423])
def test_duplicate_in_flight_gets_the_on_conflict_status(
    client: Client, protect: Protect, store: BaseStorage, status: int
) -> None:
    url = protect(create_order, on_conflict=status)
    in_flight_claim(url, storage=store)

    response = send(client, url)

    problem(response, status, "idempotency_key_in_use")
    assert response["Retry-After"] == "1"
    assert orders() == 0


def test_waiting_duplicate_gets_the_first_response(
    client: Client, protect: Protect, store: BaseStorage
) -> None:
    url = protect(create_order, on_conflict="wait", wait_timeout=5)
    request_key, token = in_flight_claim(url, storage=store)
    stored = StoredResponse(
        status=201, headers=(("Content-Type", "application/json"),), body=b'{"id": 99}'
    )

    def finish() -> None:  # the first request, completing in its own thread
        try:
            store.complete(request_key, token, stored)
        finally:
            connections.close_all()

    finisher = threading.Timer(0.3, finish)
    finisher.start()

    response = send(client, url)
    finisher.join()

    assert response.status_code == 201
    assert replayed(response)
    assert response.content == b'{"id": 99}'
    assert orders() == 0


def test_after_ttl_the_key_is_new_again(client: Client, protect: Protect) -> None:
    url = protect(create_order, ttl=1, lock_timeout=0.5)
    send(client, url)
    time.sleep(1.3)

    again = send(client, url)

    assert again.status_code == 201
    assert not replayed(again)
    assert orders() == 2


def test_abandoned_claim_is_taken_over_and_the_old_owner_is_fenced(
    client: Client, protect: Protect, store: BaseStorage
) -> None:
    url = protect(create_order, lock_timeout=0.5)
    request_key, old_token = in_flight_claim(url, lease=0.5, storage=store)
    time.sleep(0.8)

    taken_over = send(client, url)
    late = store.complete(request_key, old_token, StoredResponse(status=200, body=b"late"))
    retry = send(client, url)

    assert taken_over.status_code == 201
    assert late is False
    assert replayed(retry)
    assert retry.content == taken_over.content
    assert orders() == 1


def test_exception_releases_the_key(client: Client, protect: Protect) -> None:
    runs: list[int] = []

    def flaky(request: HttpRequest) -> HttpResponse:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("the payment provider hung up")
        return create_order(request)

    url = protect(flaky)
    client.raise_request_exception = True
    with pytest.raises(RuntimeError):
        send(client, url)
    retry = send(client, url)

    assert retry.status_code == 201
    assert not replayed(retry)
    assert len(runs) == 2


def test_server_error_is_released_and_client_error_stored(client: Client, protect: Protect) -> None:
    answers = iter([503, 201, 400])
    runs: list[int] = []

    def answering(request: HttpRequest) -> HttpResponse:
        runs.append(1)
        return HttpResponse(b"answer", status=next(answers))

    url = protect(answering)
    assert send(client, url).status_code == 503
    assert send(client, url).status_code == 201  # ran again: the 503 was not kept
    assert replayed(send(client, url))
    assert len(runs) == 2

    assert send(client, url, key="client-error").status_code == 400
    retry = send(client, url, key="client-error")  # the 400 was kept: replayed, not run

    assert retry.status_code == 400
    assert replayed(retry)
    assert len(runs) == 3


def test_streaming_response_is_not_replayed_nor_run_again(client: Client, protect: Protect) -> None:
    from django.http import StreamingHttpResponse

    runs: list[int] = []

    def stream(request: HttpRequest) -> StreamingHttpResponse:
        runs.append(1)
        return StreamingHttpResponse(iter([b"a", b"b"]))

    url = protect(stream)
    first = send(client, url)
    assert b"".join(first.streaming_content) == b"ab"  # type: ignore[attr-defined]

    duplicate = send(client, url)

    document = problem(duplicate, 409, "idempotency_response_not_stored")
    assert document["original_status"] == 200
    assert len(runs) == 1
