"""``downstream_key()``: the key a protected view passes on to another service."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from factories import UserFactory
from helpers import KEY, send

from django_idempotency.decorators import idempotent
from django_idempotency.downstream import downstream_key

pytestmark = pytest.mark.django_db


def test_same_on_every_retry_and_distinct_per_purpose_and_client(
    client: Client, serve: Callable[..., str]
) -> None:
    """The provider sees one key for a request however often it is retried
    (here the first run fails after calling it), another for another
    purpose, and another for another user's request with the same key."""
    seen: list[tuple[str, str]] = []
    failures = [RuntimeError("the provider answered, the view then failed")]

    @idempotent
    def charge(request: HttpRequest) -> HttpResponse:
        seen.append((downstream_key(request, "charge"), downstream_key(request, "receipt")))
        if failures:
            raise failures.pop()
        return JsonResponse({}, status=201)

    url = serve(charge)
    client.raise_request_exception = False
    assert send(client, url).status_code == 500
    assert send(client, url).status_code == 201
    client.force_login(UserFactory(username="bob"))
    send(client, url)

    (charge_1, receipt_1), (charge_2, receipt_2), (charge_bob, _) = seen
    assert charge_1 == charge_2
    assert receipt_1 == receipt_2
    assert charge_1 != receipt_1
    assert charge_bob != charge_1
    assert KEY not in charge_1
    assert len(charge_1) == 64


def test_refused_without_a_claim(client: Client, serve: Callable[..., str]) -> None:
    errors: list[Exception] = []

    @idempotent
    def view(request: HttpRequest) -> HttpResponse:
        try:
            downstream_key(request, "charge")
        except LookupError as error:
            errors.append(error)
        return JsonResponse({}, status=201)

    send(client, serve(view), key=None)
    assert len(errors) == 1
