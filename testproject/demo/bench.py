"""Endpoints the benchmarks compare: two views, each plain and protected.

Mounted only when ``IDEMPOTENCY_BENCH=1`` (``benchmarks/run.py`` sets it).

``typical``
    writes an order and answers a JSON document of about 1 KB, like an API
    returning the resource it created;
``minimal``
    the cheapest view a user could write: one ``INSERT``, a 40-byte answer.
    It is where the cost of protection shows most.

Each view is mounted at ``/bench/<view>/<form>/``: ``plain``, ``database``
(``@idempotent``), ``atomic`` (the database store in atomic mode), ``redis``
(the Redis store), and as a DRF ``APIView``: ``drf-plain``, ``drf-database``,
``drf-redis`` (``IdempotencyMixin``).

Three more forms measure the floor of a design: ``floor-database`` and
``floor-redis`` make the store's two round trips (its claim's statement or
script before the view, its completion's after), with the package's own SQL
and Lua and precomputed parameters, and none of the package's Python around
them. What a protected form costs beyond its floor is the package's Python.
``floor-one-commit`` is the database floor with the claim, the view's
writes and the completion committed once: a design measured, not built.

``benchmarks/clients.py`` calls the demo's charges (``demo.payments``) at
``/bench/clients/<store>/<answers>/<case>/v1/charges``: on each store, with
problem+json or Stripe's answers, and in each case of ``CLIENT_CASES``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.views.decorators.csrf import csrf_exempt

from demo.models import Order
from demo.payments import api_key_scope, create_charge
from django_idempotency.decorators import idempotent
from django_idempotency.errors import stripe_response

#: The typical answer's padding: the document is about 1 KB.
NOTE = "x" * 900


def _create(request: HttpRequest) -> Order:
    data = json.loads(request.body or b"{}")
    return Order.objects.create(item=str(data.get("item", "bench"))[:100], quantity=1)


def _typical(order: Order) -> dict[str, Any]:
    return {"id": order.pk, "item": order.item, "quantity": order.quantity, "note": NOTE}


def _minimal(order: Order) -> dict[str, Any]:
    return {"id": order.pk, "status": "created"}


#: Each view's answer, built from the order it wrote.
DOCUMENTS: dict[str, Callable[[Order], dict[str, Any]]] = {
    "typical": _typical,
    "minimal": _minimal,
}


#: The start of the Redis keys of these views: the benchmark's servers share
#: "bench"; each test process has its own (tests/conftest.py), so that test
#: runs side by side on one Redis never clear each other's records.
REDIS_PREFIX = os.environ.get("IDEMPOTENCY_BENCH_REDIS_PREFIX", "bench")


def _redis_storage() -> Any:
    from django_idempotency.storage import RedisStorage

    return RedisStorage(cache_alias="idempotency", key_prefix=REDIS_PREFIX)


def _function_view(document: Callable[[Order], dict[str, Any]]) -> Callable[..., HttpResponse]:
    def create(request: HttpRequest) -> HttpResponse:
        body = json.dumps(document(_create(request)))
        return HttpResponse(body, status=201, content_type="application/json")

    return create


def _floor_database(
    view: Callable[..., HttpResponse], *, one_commit: bool = False
) -> Callable[..., HttpResponse]:
    """``view`` between the database store's claim and completion, as bare
    statements on Django's cursor; with ``one_commit``, the claim, the
    view's writes and the completion in one transaction (a design not built:
    duplicates would wait on the unique index for the first request's
    commit)."""
    from django_idempotency.records import RequestKey
    from django_idempotency.responses import StoredResponse
    from django_idempotency.storage.base import new_token
    from django_idempotency.storage.statements import Statements

    built: list[Statements] = []

    def floor(request: HttpRequest) -> HttpResponse:
        if one_commit:
            with transaction.atomic():
                return protected(request)
        return protected(request)

    def protected(request: HttpRequest) -> HttpResponse:
        if not built:
            built.append(Statements(connection))
        statements = built[0]
        key = RequestKey(scope="", key=request.headers["Idempotency-Key"], fingerprint="f" * 64)
        token = new_token()
        with connection.cursor() as cursor:
            cursor.execute(
                statements.claim, statements.claim_params(key, token, ttl=86400, lease=10)
            )
        response = view(request)
        stored = StoredResponse(response.status_code, (), response.content, True)
        with connection.cursor() as cursor:
            cursor.execute(statements.complete, statements.complete_params(key, token, stored))
        return response

    return floor


def _floor_redis(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """``view`` between the Redis store's claim and completion scripts, run
    as redis-py ``Script`` objects, as the store runs them."""
    from django_idempotency.storage.base import new_token
    from django_idempotency.storage.redis import CLAIM, COMPLETE

    storage = _redis_storage()
    scripts: dict[str, Any] = {}

    def floor(request: HttpRequest) -> HttpResponse:
        client = storage.client()
        if not scripts:
            scripts.update(
                claim=client.register_script(CLAIM), complete=client.register_script(COMPLETE)
            )
        redis_key = f"{REDIS_PREFIX}:floor:{request.headers['Idempotency-Key']}"
        token = new_token()
        scripts["claim"]([redis_key], (token, "f" * 64, 86_400_000, 10_000), client)
        response = view(request)
        args = (token, response.status_code, "[]", response.content, "1")
        scripts["complete"]([redis_key], args, client)
        return response

    return floor


urlpatterns: list[URLPattern] = []
for name, document in DOCUMENTS.items():
    view = _function_view(document)
    urlpatterns.append(path(f"bench/{name}/floor-database/", csrf_exempt(_floor_database(view))))
    one_commit = _floor_database(view, one_commit=True)
    urlpatterns.append(path(f"bench/{name}/floor-one-commit/", csrf_exempt(one_commit)))
    if settings.HAS_REDIS:
        urlpatterns.append(path(f"bench/{name}/floor-redis/", csrf_exempt(_floor_redis(view))))
    urlpatterns += [
        path(f"bench/{name}/plain/", csrf_exempt(view)),
        path(f"bench/{name}/database/", csrf_exempt(idempotent(view))),
        path(f"bench/{name}/atomic/", csrf_exempt(idempotent(atomic=True)(view))),
        # Not decorated: IdempotencyMiddleware protects it, by its name in
        # the test project's PROTECTED_URLS.
        path(f"bench/{name}/middleware/", csrf_exempt(view), name=f"bench-middleware-{name}"),
    ]
    if settings.HAS_REDIS:
        protected = idempotent(storage=_redis_storage())(view)
        urlpatterns.append(path(f"bench/{name}/redis/", csrf_exempt(protected)))

if settings.HAS_DRF:
    from rest_framework.request import Request
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from django_idempotency.rest_framework import IdempotencyMixin

    def _api_views(document: Callable[[Order], dict[str, Any]]) -> tuple[Any, Any]:
        class Plain(APIView):
            authentication_classes: list[Any] = []

            def post(self, request: Request) -> Response:
                return Response(document(_create(request)), status=201)

        class Protected(IdempotencyMixin, Plain):
            pass

        return Plain, Protected

    for name, document in DOCUMENTS.items():
        plain, protected_class = _api_views(document)
        urlpatterns += [
            path(f"bench/{name}/drf-plain/", plain.as_view()),
            path(f"bench/{name}/drf-database/", protected_class.as_view()),
        ]
        if settings.HAS_REDIS:
            redis_view = protected_class.as_view(idempotency_storage=_redis_storage())
            urlpatterns.append(path(f"bench/{name}/drf-redis/", redis_view))


# -- benchmarks/clients.py: the demo's charges, for clients that retry ---------------------------

#: ``on_conflict="wait"``'s limit in the ``wait`` case.
CLIENTS_WAIT_TIMEOUT = 10

#: How each case protects the charges: ``conflict`` answers 409 to a request
#: in flight, ``wait`` waits for it, ``required`` needs a key, ``unstored``
#: stores no response (too large), ``rollback``'s writes are rolled back.
CLIENT_CASES: dict[str, dict[str, Any]] = {
    "conflict": {},
    "wait": {"on_conflict": "wait", "wait_timeout": CLIENTS_WAIT_TIMEOUT},
    "required": {"required": True},
    "unstored": {"max_body_size": 10},
    "rollback": {},
}


def _rolled_back_charge(request: HttpRequest) -> HttpResponse:
    response = create_charge(request)
    transaction.set_rollback(True)  # as a failed later step of the request would
    return response


def _charges(storage: Any, answers: str, case: str) -> Callable[..., HttpResponse]:
    view = _rolled_back_charge if case == "rollback" else create_charge
    protected = idempotent(
        view,
        storage=storage,
        scope_func=api_key_scope,
        error_response=stripe_response if answers == "stripe" else None,
        **CLIENT_CASES[case],
    )
    return csrf_exempt(transaction.atomic(protected) if case == "rollback" else protected)


_client_stores: dict[str, Any] = {"database": "django_idempotency.storage.DatabaseStorage"}
if settings.HAS_REDIS:
    _client_stores["redis"] = _redis_storage()
for _store, _storage in _client_stores.items():
    for _answers in ("problem", "stripe"):
        for _case in CLIENT_CASES:
            urlpatterns.append(
                path(
                    f"bench/clients/{_store}/{_answers}/{_case}/v1/charges",
                    _charges(_storage, _answers, _case),
                )
            )
