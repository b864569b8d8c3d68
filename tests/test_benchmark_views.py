"""The views ``benchmarks/run.py`` measures (``demo.bench``) do what its
figures assume: each form answers the view's document, each protected form
replays it, and each floor makes the store's claim and completion, so that a
change to the package cannot leave the benchmark measuring something else."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from importlib import import_module
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import clear_url_caches
from helpers import replayed

from demo.models import Charge, Order
from django_idempotency.models import IdempotencyKey

BENCH = "demo.bench"
FLOORS = ("floor-database", "floor-one-commit", "floor-redis")


#: Every route of ``benchmarks/run.py``, ``bench/<view>/<form>/``, and of
#: ``benchmarks/clients.py``, ``bench/clients/<store>/<answers>/<case>/v1/charges``.
ALL_ROUTES = [str(pattern.pattern) for pattern in import_module(BENCH).urlpatterns]
ROUTES = [route for route in ALL_ROUTES if not route.startswith("bench/clients/")]
CLIENT_ROUTES = [route for route in ALL_ROUTES if route.startswith("bench/clients/")]


def _form(route: str) -> str:
    return route.split("/")[2]


PROTECTED = [r for r in ROUTES if _form(r) not in ("plain", "drf-plain", *FLOORS)]


@pytest.fixture
def bench(settings: Any) -> Iterator[Client]:
    settings.ROOT_URLCONF = BENCH
    clear_url_caches()
    yield Client()
    clear_url_caches()
    if django_settings.HAS_REDIS:
        from django_redis import get_redis_connection

        client = get_redis_connection("idempotency")
        for redis_key in client.scan_iter(match=f"{import_module(BENCH).REDIS_PREFIX}:*"):
            client.delete(redis_key)


def _post(client: Client, route: str, key: str) -> Any:
    return client.post(
        "/" + route,
        json.dumps({"item": "bench"}),
        content_type="application/json",
        headers={"Idempotency-Key": key},
    )


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES)
def test_every_form_answers_the_views_document(bench: Client, route: str) -> None:
    before = Order.objects.count()

    response = _post(bench, route, uuid.uuid4().hex)

    assert response.status_code == 201, response.content
    document = json.loads(response.content)
    assert document["id"] == Order.objects.latest("pk").pk
    assert Order.objects.count() == before + 1
    expected = {"id", "status"} if route.startswith("bench/minimal/") else {"id", "item", "note"}
    assert expected <= set(document)


@pytest.mark.django_db
@pytest.mark.parametrize("route", PROTECTED)
def test_every_protected_form_replays_the_first_answer(bench: Client, route: str) -> None:
    key = uuid.uuid4().hex
    first = _post(bench, route, key)

    again = _post(bench, route, key)

    assert again.status_code == first.status_code == 201
    assert replayed(again)
    assert again.content == first.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    "route", [r for r in ROUTES if _form(r) in ("floor-database", "floor-one-commit")]
)
def test_the_database_floors_claim_and_complete_a_record(bench: Client, route: str) -> None:
    key = uuid.uuid4().hex

    response = _post(bench, route, key)

    record = IdempotencyKey.objects.get(key=key)
    assert record.state == "completed"
    assert bytes(record.response_body) == response.content


@pytest.mark.django_db
@pytest.mark.parametrize("route", [r for r in ROUTES if _form(r) == "floor-redis"])
def test_the_redis_floor_claims_and_completes_a_record(bench: Client, route: str) -> None:
    from django_redis import get_redis_connection

    key = uuid.uuid4().hex

    response = _post(bench, route, key)

    prefix = import_module(BENCH).REDIS_PREFIX
    record = get_redis_connection("idempotency").hgetall(f"{prefix}:floor:{key}")
    assert record[b"s"] == b"c"
    assert record[b"b"] == response.content


# -- benchmarks/clients.py ---------------------------------------------------------------------


def _charge(client: Client, route: str, key: str | None) -> Any:
    headers = {"Authorization": "Bearer sk_bench"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/" + route, {"amount": "100", "currency": "eur"}, headers=headers)


def _code(response: Any) -> str:
    document = json.loads(response.content)
    return str(document["error"]["code"] if "error" in document else document["code"])


@pytest.mark.django_db
@pytest.mark.parametrize("route", CLIENT_ROUTES)
def test_each_client_case_answers_as_it_says(bench: Client, route: str) -> None:
    answers, case = route.split("/")[3:5]
    key = uuid.uuid4().hex

    first = _charge(bench, route, key)
    again = _charge(bench, route, key)

    if case == "rollback":
        assert first.status_code == again.status_code == 503
        assert _code(first) == "idempotency_transaction_rolled_back"
        assert Charge.objects.count() == 0
        return
    assert first.status_code == 200
    assert json.loads(first.content) == Charge.objects.get().as_stripe()
    if case == "unstored":
        assert again.status_code == 409
        assert _code(again) == "idempotency_response_not_stored"
    else:
        assert replayed(again)
        assert again.content == first.content
    if case == "required":
        missing = _charge(bench, route, None)
        assert missing.status_code == 400
        assert _code(missing) == "idempotency_key_missing"
    if answers == "stripe":
        assert again.has_header("Stripe-Should-Retry") == (case == "unstored")
