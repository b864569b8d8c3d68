"""``django_idempotency.testing``: the checks users run on their own
endpoints pass where the endpoint is idempotent, and fail, saying what was
expected and what came back, where it is not.

The endpoints are the demo's: ``/orders/`` (``@idempotent``),
``/slow/orders/conflict/`` (slow enough for duplicates to meet it, answered
409 while it runs), and the middleware's ``/shop/basket/``, which is exempt:
it runs every time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, LiveServerTestCase
from helpers import create_order, orders

from demo import shop
from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.testing import (
    IdempotencyAssertions,
    assert_refuses_changed_body,
    assert_replays,
    assert_runs_once,
)

pytestmark = pytest.mark.django_db

ORDER = {"item": "tea", "quantity": 2}


def basket_posts() -> int:
    return shop.basket_posts[0]


# -- assert_replays ---------------------------------------------------------------------------


def test_assert_replays_passes_on_a_protected_endpoint(client: Client) -> None:
    first, retry = assert_replays(client, "/orders/", ORDER)

    assert first.status == retry.status == 201
    assert retry.replayed
    assert json.loads(retry.body)["item"] == "tea"
    assert orders() == 1


def test_assert_replays_fails_where_the_view_runs_again(client: Client) -> None:
    with pytest.raises(AssertionError) as failure:
        assert_replays(client, "/shop/basket/", ORDER, key="basket-1")

    message = str(failure.value)
    assert message.startswith("The retry did not replay the first answer: its body differs")
    assert "it has no Idempotent-Replayed: true" in message
    assert "request: POST /shop/basket/ with Idempotency-Key: basket-1" in message
    assert "first: 200, application/json, 12 bytes" in message
    assert "The view seems to have run again" in message


def test_assert_replays_takes_the_status_of_replay_status(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(replay_status=200)(create_order))

    first, retry = assert_replays(client, url, ORDER, status=200)
    assert (first.status, retry.status) == (201, 200)

    with pytest.raises(AssertionError, match="its status is 200, not 201"):
        assert_replays(client, url, ORDER)


def test_a_first_request_that_failed_has_nothing_to_replay(
    client: Client, serve: Callable[..., str]
) -> None:
    @idempotent
    def failing(request: HttpRequest) -> HttpResponse:
        return JsonResponse({"error": "down"}, status=503)

    url = serve(failing)

    with pytest.raises(AssertionError) as failure:
        assert_replays(client, url, ORDER)
    assert "the first request failed, so its key was released" in str(failure.value)
    assert "first: 503" in str(failure.value)


def test_assert_replays_sends_forms_and_extra_headers(
    client: Client, serve: Callable[..., str]
) -> None:
    seen: list[tuple[str, str]] = []

    @idempotent(header="X-Request-Id")
    def form_view(request: HttpRequest) -> HttpResponse:
        seen.append((request.POST["item"], request.headers["X-Tenant"]))
        return JsonResponse({"item": request.POST["item"]}, status=201)

    url = serve(form_view)

    assert_replays(
        client,
        url,
        {"item": "tea"},
        content_type="application/x-www-form-urlencoded",
        key_header="X-Request-Id",
        headers={"X-Tenant": "acme"},
    )
    assert seen == [("tea", "acme")]


# -- assert_refuses_changed_body ----------------------------------------------------------------


def test_assert_refuses_changed_body_passes_on_a_protected_endpoint(client: Client) -> None:
    first, refused = assert_refuses_changed_body(client, "/orders/", ORDER, {"item": "coffee"})

    assert (first.status, refused.status) == (201, 422)
    assert orders() == 1


def test_assert_refuses_changed_body_fails_where_the_view_runs_again(client: Client) -> None:
    with pytest.raises(AssertionError) as failure:
        assert_refuses_changed_body(client, "/shop/basket/", ORDER, {"item": "coffee"})

    message = str(failure.value)
    assert message.startswith("The key reused with another body was not refused with 422.")
    assert "changed: 200" in message
    assert "The view seems to have run again with the other body." in message


def test_assert_refuses_changed_body_fails_where_the_change_is_not_seen(
    client: Client, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(fingerprint_func=lambda request: "same")(create_order))

    with pytest.raises(AssertionError, match="It was replayed: the fingerprint does not see"):
        assert_refuses_changed_body(client, url, ORDER, {"item": "coffee"})


# -- assert_runs_once, against a live server ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_assert_runs_once_passes_on_a_protected_endpoint(
    live_server: Any, store: Any, idempotency_settings: Any
) -> None:
    idempotency_settings(STORAGE=store)

    answers = assert_runs_once(
        live_server.url + "/slow/orders/conflict/?delay=0.5",
        ORDER,
        count=Order.objects.count,
        duplicates=6,
    )

    assert len(answers) == 6
    assert sum(not answer.replayed for answer in answers) == 1
    assert {answer.status for answer in answers} == {201}
    assert Order.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_assert_runs_once_fails_where_every_duplicate_runs(live_server: Any) -> None:
    with pytest.raises(AssertionError) as failure:
        assert_runs_once(live_server.url + "/shop/basket/", ORDER, count=basket_posts, duplicates=4)

    message = str(failure.value)
    assert message.startswith(
        "4 concurrent duplicates should run the endpoint once: it ran 4 times"
    )
    assert "4 answers are not replays, not 1" in message
    assert "answers: 200 x4" in message


@pytest.mark.django_db(transaction=True)
def test_assert_runs_once_reports_a_server_it_cannot_reach() -> None:
    with pytest.raises(
        AssertionError, match=r"A duplicate could not be sent to http://127\.0\.0\.1:9/"
    ):
        assert_runs_once("http://127.0.0.1:9/", ORDER, count=lambda: 0, duplicates=2, timeout=2)


# -- Django's TestCase ----------------------------------------------------------------------------


class OrdersAreIdempotent(IdempotencyAssertions, LiveServerTestCase):
    """The checks as a Django test case would use them."""

    def test_a_retry_is_a_replay(self) -> None:
        first, retry = self.assertReplays("/shop/orders/", ORDER)
        assert first.body == retry.body

    def test_a_changed_body_is_refused(self) -> None:
        self.assertRefusesChangedBody("/shop/orders/", ORDER, {"item": "coffee"})

    def test_duplicates_run_once(self) -> None:
        self.assertRunsOnce(
            "/slow/orders/conflict/?delay=0.3", ORDER, count=Order.objects.count, duplicates=4
        )
        assert Order.objects.count() == 1

    def test_a_failure_is_an_assertion_error(self) -> None:
        with self.assertRaisesMessage(AssertionError, "did not replay the first answer"):
            self.assertReplays("/shop/basket/", ORDER)
