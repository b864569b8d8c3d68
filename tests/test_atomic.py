"""Atomic mode (``atomic=True``): the view's writes and the completion of its
key commit in one transaction, or neither does.

These tests run in one process and use real transactions
(``transaction=True``: each test commits, and the tables are emptied after
it). The crash windows, with workers killed at each point, are in
``test_atomic_crashes.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.test import Client, override_settings
from helpers import KEY, ORDER, orders, problem, replayed, send

from demo.models import Order
from django_idempotency import conf, leases
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyKey, State
from django_idempotency.storage.database import WriteOutsideTransaction

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "secondary"])


def create(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    order = Order.objects.create(item=json.loads(request.body)["item"])
    return JsonResponse({"id": order.pk}, status=201)


def test_view_writes_and_key_commit_together(client: Client, serve: Callable[..., str]) -> None:
    url = serve(idempotent(atomic=True)(create))
    first = send(client, url)
    retry = send(client, url)
    assert first.status_code == 201
    assert replayed(retry)
    assert retry.content == first.content
    assert orders() == 1
    assert IdempotencyKey.objects.get().state == State.COMPLETED


def test_exception_rolls_back_the_views_writes_and_releases_the_key(
    client: Client, serve: Callable[..., str]
) -> None:
    failures = [RuntimeError("payment provider timed out")]

    @idempotent(atomic=True)
    def flaky(request: HttpRequest) -> HttpResponse:
        Order.objects.create(item="tea")
        if failures:
            raise failures.pop()
        return JsonResponse({"ok": True}, status=201)

    url = serve(flaky)
    client.raise_request_exception = False
    assert send(client, url).status_code == 500
    assert orders() == 0, "the failed run's order was committed"
    assert not IdempotencyKey.objects.exists()
    assert send(client, url).status_code == 201
    assert orders() == 1


def test_a_store_if_that_raises_rolls_back_and_frees_the_key(
    client: Client, serve: Callable[..., str]
) -> None:
    """The response is judged and stored inside the view's transaction; if
    that raises (here, a ``store_if`` of the project's own), the writes are
    rolled back and the key released, not left locked and renewed."""
    failures = [RuntimeError("store_if broke")]

    def store_if(response: HttpResponseBase) -> bool:
        if failures:
            raise failures.pop()
        return True

    @idempotent(atomic=True, store_if=store_if)
    def create_one(request: HttpRequest) -> HttpResponse:
        Order.objects.create(item="tea")
        return JsonResponse({"ok": True}, status=201)

    url = serve(create_one)
    client.raise_request_exception = False
    assert send(client, url).status_code == 500
    assert orders() == 0, "the failed run's order was committed"
    assert not IdempotencyKey.objects.exists()
    assert leases.renewer().leases == frozenset()
    assert send(client, url).status_code == 201
    assert orders() == 1


def test_server_error_response_rolls_back_like_an_exception(
    client: Client, serve: Callable[..., str]
) -> None:
    """A 5xx is not stored, so a retry runs again: the writes of the run that
    answered it must not stay, or the retry would repeat them."""
    statuses = [503]

    @idempotent(atomic=True)
    def unavailable(request: HttpRequest) -> HttpResponse:
        Order.objects.create(item="tea")
        return JsonResponse({}, status=statuses.pop() if statuses else 201)

    url = serve(unavailable)
    assert send(client, url).status_code == 503
    assert orders() == 0
    assert send(client, url).status_code == 201
    assert orders() == 1


def test_on_commit_hooks_run_once_for_the_run_that_committed(
    client: Client, serve: Callable[..., str]
) -> None:
    sent: list[int] = []

    @idempotent(atomic=True)
    def notify(request: HttpRequest) -> HttpResponse:
        order = Order.objects.create(item="tea")
        transaction.on_commit(lambda: sent.append(order.pk))
        return JsonResponse({"id": order.pk}, status=201)

    url = serve(notify)
    send(client, url)
    send(client, url)
    assert len(sent) == 1


def test_view_with_its_own_atomic_blocks(client: Client, serve: Callable[..., str]) -> None:
    @idempotent(atomic=True)
    def nested(request: HttpRequest) -> HttpResponse:
        with transaction.atomic():
            Order.objects.create(item="tea")
        try:
            with transaction.atomic():
                Order.objects.create(item="discarded")
                raise ValueError
        except ValueError:
            pass
        return JsonResponse({}, status=201)

    url = serve(nested)
    send(client, url)
    assert replayed(send(client, url))
    assert list(Order.objects.values_list("item", flat=True)) == ["tea"]


def test_claim_taken_over_before_the_commit_rolls_the_view_back(
    client: Client, serve: Callable[..., str]
) -> None:
    """The view outlives its lease and another request takes the key over
    meanwhile (here a committed UPDATE from another connection): the late
    view's completion finds the key no longer its own, so its writes are
    rolled back and its client told to retry."""

    @idempotent(atomic=True)
    def overtaken(request: HttpRequest) -> HttpResponse:
        def take_over() -> None:
            IdempotencyKey.objects.update(owner="another-request")
            connections.close_all()

        # Before the view's first write: SQLite lets one connection write at a time.
        thread = threading.Thread(target=take_over)
        thread.start()
        thread.join()
        Order.objects.create(item="tea")
        return JsonResponse({}, status=201)

    url = serve(overtaken)
    problem(send(client, url), 409, "idempotency_key_in_use")
    assert orders() == 0
    assert IdempotencyKey.objects.get().owner == "another-request"


def test_template_response_is_rendered_inside_the_transaction(
    client: Client, serve: Callable[..., str]
) -> None:
    from django.template import engines
    from django.template.response import TemplateResponse

    template = engines["django"].from_string("order {{ pk }}")

    @idempotent(atomic=True)
    def page(request: HttpRequest) -> TemplateResponse:
        order = Order.objects.create(item="tea")
        return TemplateResponse(request, template, {"pk": order.pk}, status=201)

    url = serve(page)
    first = send(client, url)
    retry = send(client, url)
    assert first.content == retry.content == f"order {Order.objects.get().pk}".encode()
    assert replayed(retry)


def test_write_to_another_database_is_refused(client: Client, serve: Callable[..., str]) -> None:
    @idempotent(atomic=True)
    def elsewhere(request: HttpRequest) -> HttpResponse:
        Order.objects.using("secondary").create(item="tea")
        return JsonResponse({}, status=201)

    url = serve(elsewhere)
    with pytest.raises(WriteOutsideTransaction, match="'secondary'"):
        send(client, url)
    assert not IdempotencyKey.objects.exists(), "the key was not released"


def test_reads_from_another_database_are_allowed(client: Client, serve: Callable[..., str]) -> None:
    @idempotent(atomic=True)
    def reads(request: HttpRequest) -> HttpResponse:
        count = Order.objects.using("secondary").count()
        Order.objects.create(item="tea")
        return JsonResponse({"before": count}, status=201)

    assert send(client, serve(reads)).status_code == 201


# -- composing with ATOMIC_REQUESTS ------------------------------------------------------------


def atomic_requests(on: bool = True) -> Any:
    databases = {alias: dict(connections.settings[alias]) for alias in connections.settings}
    databases["default"]["ATOMIC_REQUESTS"] = on
    return override_settings(DATABASES=databases)


@pytest.fixture
def with_atomic_requests() -> Any:
    connection.settings_dict["ATOMIC_REQUESTS"] = True
    yield
    connection.settings_dict["ATOMIC_REQUESTS"] = False


@pytest.mark.usefixtures("with_atomic_requests")
def test_with_atomic_requests_a_duplicate_sees_the_claim_while_the_first_runs(
    client: Client, serve: Callable[..., str], db_vendor: str
) -> None:
    if db_vendor == "sqlite":
        pytest.skip("on SQLite claims join the request's transaction (one writer): it waits")
    entered, release = threading.Event(), threading.Event()
    answers: list[Any] = []

    @idempotent(atomic=True)
    def slow(request: HttpRequest) -> HttpResponse:
        order = Order.objects.create(item="tea")
        if not entered.is_set():
            entered.set()
            assert release.wait(10)
        return JsonResponse({"id": order.pk}, status=201)

    url = serve(slow)

    def first() -> None:
        answers.append(send(Client(), url))
        connections.close_all()

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(10)
    problem(send(client, url), 409, "idempotency_key_in_use")
    release.set()
    thread.join()
    assert answers[0].status_code == 201
    assert replayed(send(client, url))
    assert orders() == 1


@pytest.mark.usefixtures("with_atomic_requests")
def test_with_atomic_requests_an_exception_releases_the_key_for_good(
    client: Client, serve: Callable[..., str]
) -> None:
    failures = [RuntimeError("boom")]

    @idempotent(atomic=True)
    def flaky(request: HttpRequest) -> HttpResponse:
        Order.objects.create(item="tea")
        if failures:
            raise failures.pop()
        return JsonResponse({}, status=201)

    url = serve(flaky)
    client.raise_request_exception = False
    assert send(client, url).status_code == 500
    assert orders() == 0
    assert not IdempotencyKey.objects.exists()
    assert send(client, url).status_code == 201
    assert orders() == 1


# -- what atomic mode refuses -------------------------------------------------------------------


def test_async_view_is_refused_when_decorated() -> None:
    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    with pytest.raises(TypeError, match="async view"):
        idempotent(atomic=True)(view)


def test_store_without_transactions_is_refused(
    client: Client, serve: Callable[..., str], idempotency_settings: Callable[..., None]
) -> None:
    pytest.importorskip("django_redis")
    idempotency_settings(
        STORAGE="django_idempotency.storage.RedisStorage",
        STORAGE_OPTIONS={"CACHE_ALIAS": "idempotency"},
    )
    protection = idempotent(atomic=True)(create)
    with pytest.raises(conf.OptionError, match="RedisStorage cannot"):
        protection.idempotency.policy  # type: ignore[attr-defined]  # noqa: B018


def test_key_and_body_are_those_of_the_request(client: Client, serve: Callable[..., str]) -> None:
    url = serve(idempotent(atomic=True)(create))
    send(client, url)
    problem(send(client, url, {**ORDER, "item": "latte"}), 422, "idempotency_key_mismatch")
    assert IdempotencyKey.objects.get().key == KEY


# -- Django REST framework ------------------------------------------------------------------------


def drf_view(**attributes: Any) -> Any:
    pytest.importorskip("rest_framework")
    from rest_framework.exceptions import ValidationError
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from django_idempotency.rest_framework import IdempotencyMixin

    def post(self: Any, request: Any) -> Response:
        order = Order.objects.create(item=request.data["item"])
        if request.data.get("quantity") == 0:
            raise ValidationError({"quantity": "Order at least one."})
        return Response({"id": order.pk}, status=201)

    attributes = {"authentication_classes": [], "post": post, **attributes}
    return type("Orders", (IdempotencyMixin, APIView), attributes).as_view()


def test_mixin_commits_the_writes_with_the_rendered_response(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(drf_view(idempotency_atomic=True))
    first = send(client, url)
    retry = send(client, url)
    assert first.status_code == 201
    assert replayed(retry)
    assert retry.content == first.content
    assert orders() == 1


def test_mixin_stores_drfs_error_answer_without_the_writes_it_rolled_back(
    client: Client, serve: Callable[..., str]
) -> None:
    """DRF's exception handler marks the transaction for rollback when it
    answers an error: the order goes, the 400 is stored on its own."""
    url = serve(drf_view(idempotency_atomic=True))
    invalid = {"item": "tea", "quantity": 0}
    first = send(client, url, invalid)
    retry = send(client, url, invalid)
    assert first.status_code == 400
    assert replayed(retry)
    assert retry.content == first.content
    assert orders() == 0


def test_idempotent_atomic_below_api_view_is_refused(
    client: Client, serve: Callable[..., str]
) -> None:
    pytest.importorskip("rest_framework")
    from rest_framework.decorators import api_view

    url = serve(api_view(["POST"])(idempotent(atomic=True)(create)))
    with pytest.raises(ImproperlyConfigured, match="above @api_view"):
        send(client, url)
