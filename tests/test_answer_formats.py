"""Every answer of the package, in every format that renders it.

Each answer is produced for real (a missing key, a claim still held, a key
reused, a response too large to store, a store that cannot be reached, a
success whose writes roll back), through each way a view is protected
(``@idempotent``, the DRF mixin, a Django Ninja operation), and rendered by
each kind of ``error_response``: the adapter's own, a project's function that
sets no header, one that sets ``Retry-After`` on everything, and Stripe's
answers. Whatever renders it:

- a transient answer (in flight, store unavailable, rolled back) carries
  ``Retry-After``, and a permanent one (key missing or invalid, reused with
  another request, response not stored) never does;
- under Stripe's answers, the body is ``{"error": {"type", "code",
  "message"}}``, a reused key is a 400 ``idempotency_error``, and
  ``Stripe-Should-Retry`` is ``true`` on the transient answers and ``false``
  on the others.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.test import AsyncClient, Client
from helpers import ORDER, acreate_order, asend, create_order, drf_protected, in_flight_claim, send

from django_idempotency.decorators import idempotent
from django_idempotency.errors import IdempotencyError

#: The answers, each with the status and code of the package's own format,
#: and whether a retry of the same request may get another answer.
ANSWERS = {
    "missing": (400, "idempotency_key_missing", False),
    "invalid": (400, "idempotency_key_invalid", False),
    "in_use": (409, "idempotency_key_in_use", True),
    "mismatch": (422, "idempotency_key_mismatch", False),
    "not_stored": (409, "idempotency_response_not_stored", False),
    "unavailable": (503, "idempotency_storage_unavailable", True),
    "rolled_back": (503, "idempotency_transaction_rolled_back", True),
}

#: Stripe's type for each answer, and the statuses where Stripe's differ.
STRIPE_TYPES = {
    "missing": "invalid_request_error",
    "invalid": "invalid_request_error",
    "in_use": "invalid_request_error",
    "mismatch": "idempotency_error",
    "not_stored": "api_error",
    "unavailable": "api_error",
    "rolled_back": "api_error",
}
STRIPE_STATUSES = {"mismatch": 400}

#: Options under which every answer can be produced on one endpoint: a key is
#: required, and no response is small enough to be stored.
OPTIONS: dict[str, Any] = {"required": True, "max_body_size": 1}

ROLL_BACK = "X-Roll-Back"

_namespaces = itertools.count()


def create_or_roll_back(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    """:func:`helpers.create_order`, whose writes are marked to be rolled
    back when the request has an ``X-Roll-Back`` header."""
    response = create_order(request)
    if ROLL_BACK in request.headers:
        transaction.set_rollback(True)
    return response


# -- the formats ----------------------------------------------------------------------------


def bare_error(request: HttpRequest, error: IdempotencyError) -> HttpResponse:
    """A project's format that copies no header of the error."""
    return JsonResponse({"failure": error.code}, status=error.status)


def eager_error(request: HttpRequest, error: IdempotencyError) -> HttpResponse:
    """A project's format that tells every client to retry in 30 s."""
    response = JsonResponse({"failure": error.code}, status=error.status)
    response["Retry-After"] = "30"
    return response


FORMATS: dict[str, str | None] = {
    "own": None,  # the adapter's: problem+json, or Ninja's {"detail": ...}
    "bare": f"{__name__}.bare_error",
    "eager": f"{__name__}.eager_error",
    "stripe": "django_idempotency.errors.stripe_response",
}


# -- the ways a view is protected -------------------------------------------------------------


def protected(kind: str, serve: Callable[..., str]) -> str:
    """The URL of ``create_or_roll_back`` protected with OPTIONS as ``kind`` does."""
    if kind == "decorator":
        return serve(idempotent(create_or_roll_back, **OPTIONS))
    if kind == "drf":
        pytest.importorskip("rest_framework")
        return serve(drf_protected(create_or_roll_back, OPTIONS))
    pytest.importorskip("ninja")
    from ninja import NinjaAPI

    api = NinjaAPI(urls_namespace=f"answers-{next(_namespaces)}")

    @api.post("/orders")
    @idempotent(**OPTIONS)
    def create(request: HttpRequest) -> HttpResponseBase:
        return create_or_roll_back(request)

    return serve(api.urls, "endpoint/") + "orders"


# -- producing each answer ---------------------------------------------------------------------


def produce(answer: str, client: Client, url: str) -> HttpResponseBase:
    """Send what gets ``answer``, for real; return the answer."""
    if answer == "missing":
        return send(client, url, key=None)
    if answer == "invalid":
        return send(client, url, key="k" * 256)
    if answer == "in_use":
        in_flight_claim(url)
        return send(client, url)
    if answer in ("mismatch", "not_stored"):
        assert send(client, url).status_code == 201
        other = {**ORDER, "quantity": 99} if answer == "mismatch" else ORDER
        return send(client, url, other)
    if answer == "rolled_back":
        return send(client, url, headers={ROLL_BACK: "1"})
    return send(client, url)  # unavailable: the store is down


def answer_params() -> list[Any]:
    """Each answer, with the database it needs: none for the store that is
    down (which unblocks its own), a transactional one for a rollback."""
    marks = {"unavailable": [], "rolled_back": [pytest.mark.django_db(transaction=True)]}
    return [
        pytest.param(answer, marks=marks.get(answer, [pytest.mark.django_db])) for answer in ANSWERS
    ]


@pytest.fixture
def prepare(
    request: pytest.FixtureRequest, idempotency_settings: Callable[..., None]
) -> Callable[[str], None]:
    """``prepare(answer)``: what producing ``answer`` needs beyond the request:
    a store that is down, or ``ATOMIC_REQUESTS``."""

    def prepare_for(answer: str) -> None:
        if answer == "unavailable":
            idempotency_settings(
                STORAGE_OPTIONS={"DATABASE": request.getfixturevalue("down_database")}
            )
        elif answer == "rolled_back":
            request.getfixturevalue("atomic_requests")

    return prepare_for


# -- the hints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", answer_params())
@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize("kind", ["decorator", "drf", "ninja"])
def test_each_answer_in_each_format_with_its_retry_hint(
    kind: str,
    form: str,
    answer: str,
    serve: Callable[..., str],
    client: Client,
    idempotency_settings: Callable[..., None],
    prepare: Callable[[str], None],
) -> None:
    renderer = FORMATS[form]
    if renderer is not None:
        idempotency_settings(ERROR_RESPONSE=renderer)
    prepare(answer)
    url = protected(kind, serve)

    response = produce(answer, client, url)

    status, code, transient = ANSWERS[answer]
    body = json.loads(response.content)
    if form == "stripe":
        status = STRIPE_STATUSES.get(answer, status)
        assert response["Content-Type"] == "application/json"
        assert body["error"]["type"] == STRIPE_TYPES[answer]
        assert body["error"]["code"] == code
        assert body["error"]["message"]
        assert response["Stripe-Should-Retry"] == ("true" if transient else "false")
    elif form == "own" and kind == "ninja":
        assert set(body) == {"detail"}
    elif form == "own":
        assert body["code"] == code
    else:
        assert body == {"failure": code}
    assert response.status_code == status
    if transient:
        assert response["Retry-After"] == ("30" if form == "eager" else "1")
    else:
        assert "Retry-After" not in response


# -- Stripe's answers ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_stripes_answers_keep_the_extra_members_and_the_conflict_status(
    serve: Callable[..., str], client: Client, idempotency_settings: Callable[..., None]
) -> None:
    idempotency_settings(ERROR_RESPONSE="django_idempotency.errors.stripe_response")
    url = serve(idempotent(create_order, max_body_size=1, on_conflict=423))

    send(client, url)
    not_stored = send(client, url)
    assert json.loads(not_stored.content)["error"]["original_status"] == 201

    in_flight_claim(url, key="another")
    in_use = send(client, url, key="another")
    assert in_use.status_code == 423  # on_conflict still decides
    assert in_use["Stripe-Should-Retry"] == "true"


# -- async views ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_orm_thread_connections")
@pytest.mark.parametrize("form", ["own", "bare", "stripe"])
async def test_an_async_views_answers_carry_the_same_hints(
    form: str,
    serve: Callable[..., str],
    async_client: AsyncClient,
    idempotency_settings: Callable[..., None],
) -> None:
    renderer = FORMATS[form]
    if renderer is not None:
        idempotency_settings(ERROR_RESPONSE=renderer)
    url = serve(idempotent(acreate_order))
    assert (await asend(async_client, url)).status_code == 201

    reused = await asend(async_client, url, {**ORDER, "quantity": 99})
    await sync_to_async(in_flight_claim)(url, key="another")
    in_use = await asend(async_client, url, key="another")

    assert reused.status_code == (400 if form == "stripe" else 422)
    assert "Retry-After" not in reused
    assert in_use.status_code == 409
    assert in_use["Retry-After"] == "1"
    if form == "stripe":
        assert reused["Stripe-Should-Retry"] == "false"
        assert in_use["Stripe-Should-Retry"] == "true"
