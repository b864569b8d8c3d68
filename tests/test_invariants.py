"""The guarantees, as invariants, in every configuration users combine.

* A success (2xx) never reaches the client for writes that did not commit.
* One execution per key: a retry of a completed request is a replay.
* An answer is stored and replayed the same with and without
  ``ATOMIC_REQUESTS`` (Django REST framework's validation errors included).
* Failing open means the view runs as it would unprotected.

Each scenario runs on every combination of: the store (the database store on
the default alias, on an alias a database router chooses, Redis), the mode
(default, atomic), ``ATOMIC_REQUESTS`` off and on, ``CONN_MAX_AGE`` 0 and
persistent (``None``), the WSGI and the ASGI handler, and the kind of view (a
function view, a ``TemplateResponse``, a DRF view, a Django Ninja
operation), and how the view is protected: by ``@idempotent`` (the mixin
for the DRF view), or by ``IdempotencyMiddleware`` with the options in the
setting (the view itself undecorated; a DRF view without the mixin). Atomic mode keeps its keys on
the view's own database only, so it is combined with the default alias
alone. The middleware is combined with one ``CONN_MAX_AGE``: connections
are the store's business, not the protection's. Faults are made by the database itself: a trigger on
the keys table fails the statement the scenario names.

The tests commit for real (``transaction=True``): that is where transactions
differ.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as project
from django.db import connection, connections, router, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.template import engines
from django.template.response import TemplateResponse
from django.test import AsyncClient, Client
from helpers import View, drf_protected, drf_view, orders, problem, replayed

from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyKey
from django_idempotency.storage import DatabaseStorage
from django_idempotency.storage import database as database_store

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "keys"])

STORES = ("database", "router", "redis")
MODES = ("default", "atomic")
VIEWS = ("function", "template", "drf", "ninja")
HANDLERS = ("wsgi", "asgi")
PROTECTIONS = ("decorator", "middleware")
KEYS_TABLE = IdempotencyKey._meta.db_table

Mount = Callable[["Setup", View, dict[str, Any]], str]


@dataclass(frozen=True)
class Setup:
    store: str
    mode: str
    atomic_requests: bool
    conn_max_age: int | None
    handler: str
    view: str
    protection: str

    @property
    def id(self) -> str:
        return "-".join(
            (
                self.store,
                self.mode,
                "AR" if self.atomic_requests else "noAR",
                "persistent" if self.conn_max_age is None else f"age{self.conn_max_age}",
                self.handler,
                self.view,
                *(("middleware",) if self.protection == "middleware" else ()),
            )
        )

    @property
    def in_transaction(self) -> bool:
        """Whether the view's writes are in a transaction that may roll back
        after it returns (ours in atomic mode, Django's under ATOMIC_REQUESTS)."""
        return self.atomic_requests or self.mode == "atomic"


def setups(*, stores: tuple[str, ...] = STORES) -> list[Any]:
    """Every combination, but atomic mode off the default alias, and the
    Redis store, DRF views and Ninja operations where their extras are not
    installed (the core-only run)."""
    if not project.HAS_REDIS:
        stores = tuple(store for store in stores if store != "redis")
    missing = {"drf": not project.HAS_DRF, "ninja": not project.HAS_NINJA}
    views = tuple(view for view in VIEWS if not missing.get(view))
    combos = itertools.product(
        stores, MODES, (False, True), (0, None), HANDLERS, views, PROTECTIONS
    )
    return [
        pytest.param(Setup(*combo), id=Setup(*combo).id)
        for combo in combos
        if (combo[1] == "default" or combo[0] == "database")
        and (combo[6] == "decorator" or combo[3] == 0)
    ]


class KeysRouter:
    """A database router that keeps idempotency keys on the ``keys`` alias
    (see the test project's settings) and everything else on ``default``."""

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return "keys" if model is IdempotencyKey else None

    db_for_read = db_for_write


# -- the configuration ------------------------------------------------------------------------


@pytest.fixture
def configure(settings: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[Setup], Any]]:
    """Apply a :class:`Setup`: database settings changed in place (Django
    reads ``ATOMIC_REQUESTS`` and ``CONN_MAX_AGE`` from the connection's own
    settings), restored afterwards with the store's second connections closed."""
    saved = {alias: dict(connections[alias].settings_dict) for alias in ("default", "keys")}

    def apply(setup: Setup) -> Any:
        # Under a router, the keys' alias is the one the docs recommend:
        # without ATOMIC_REQUESTS, beside a default alias with it.
        for alias in ("default", "keys"):
            on = setup.atomic_requests and not (setup.store == "router" and alias == "keys")
            for target in (connections.settings[alias], connections[alias].settings_dict):
                target["ATOMIC_REQUESTS"] = on
                target["CONN_MAX_AGE"] = setup.conn_max_age
        if setup.store == "router":
            settings.DATABASE_ROUTERS = [f"{__name__}.KeysRouter"]
            return DatabaseStorage()
        if setup.store == "redis":
            return request.getfixturevalue("redis_store")
        return DatabaseStorage()

    yield apply
    for alias, values in saved.items():
        for target in (connections.settings[alias], connections[alias].settings_dict):
            target.update(values)
    for second in getattr(database_store._independent, "connections", {}).values():
        second.close()
    database_store._independent.__dict__.pop("connections", None)


# -- the views: one behaviour, served four ways ------------------------------------------------


class Behaviour:
    """What the view does, read from the request body ``{"item", "quantity",
    "then"}``: ``"then": "ok"`` creates the order and answers 201;
    ``"invalid"`` (quantity 0) answers 400 and writes nothing; ``"doom"``
    creates the order, then marks the transaction it runs in to be rolled
    back (the first time only) and still answers 201, as a view that swallowed
    a database error would. ``runs`` counts executions."""

    def __init__(self) -> None:
        self.runs = 0
        self.doomed = False
        #: Where the view is served.
        self.url = ""

    def order(self, data: dict[str, Any]) -> Order | None:
        """Run once: the order created, or None for an invalid request."""
        self.runs += 1
        if int(data.get("quantity", 1)) < 1:
            return None
        order = Order.objects.create(item=data["item"], quantity=int(data.get("quantity", 1)))
        if data.get("then") == "doom" and not self.doomed:
            self.doomed = True
            if connection.in_atomic_block:
                transaction.set_rollback(True)
        return order


_TEMPLATE = engines["django"].from_string('{"id": {{ id }}, "item": "{{ item }}"}')


@pytest.fixture
def mount(serve: Callable[..., str], settings: Any) -> Mount:
    """``mount(setup, view, options)``: serve ``view`` protected with
    ``options`` as the setup says, and return its URL."""

    def protected(setup: Setup, view: View, options: dict[str, Any]) -> str:
        decorated = setup.protection == "decorator"
        if not decorated:
            settings.IDEMPOTENCY = {
                "PROTECTED_URLS": ["/endpoint/"],
                **{name.upper(): value for name, value in options.items()},
            }
        if setup.view == "ninja":
            return serve(ninja_api(view, options if decorated else None).urls)
        if setup.view == "drf":
            return serve(drf_protected(view, options) if decorated else drf_view(view))
        return serve(idempotent(**options)(view) if decorated else view)

    return protected


_ninja_apis = itertools.count()


def ninja_api(view: View, options: dict[str, Any] | None) -> Any:
    """A Django Ninja API with one operation, ``POST /``, that calls ``view``
    and returns what it returns for Ninja to serialize; ``@idempotent`` with
    ``options`` unless they are None."""
    from ninja import NinjaAPI

    api = NinjaAPI(urls_namespace=f"invariants-{next(_ninja_apis)}")

    def operation(request: HttpRequest) -> Any:
        return view(request)

    operation = api.post("/", response={201: dict[str, Any]})(operation)
    if options is not None:
        idempotent(**options)(operation)
    return api


def serve_view(mount: Mount, setup: Setup, store: Any, **options: Any) -> Behaviour:
    behaviour = Behaviour()
    # The faults here are made by triggers, which fail every attempt: a short
    # completion_timeout keeps the retries of a failed completion brief.
    options = {
        "storage": store,
        "atomic": setup.mode == "atomic",
        "completion_timeout": 0.2,
        **options,
    }
    if setup.view == "ninja":
        # The answers asserted here are problem documents; Ninja's own
        # format, the default there, is tested in test_ninja.py.
        options["error_response"] = "django_idempotency.errors.problem_response"

    def function_view(request: HttpRequest) -> HttpResponse:
        order = behaviour.order(json.loads(request.body))
        if order is None:
            return JsonResponse({"quantity": ["Order at least one."]}, status=400)
        return JsonResponse({"id": order.pk, "item": order.item}, status=201)

    def template_view(request: HttpRequest) -> HttpResponseBase:
        order = behaviour.order(json.loads(request.body))
        if order is None:
            return TemplateResponse(request, _TEMPLATE, {"id": 0, "item": ""}, status=400)
        context = {"id": order.pk, "item": order.item}
        return TemplateResponse(
            request, _TEMPLATE, context, status=201, content_type="application/json"
        )

    def drf_handler(request: Any) -> HttpResponseBase:
        from rest_framework.exceptions import ValidationError
        from rest_framework.response import Response

        order = behaviour.order(dict(request.data))
        if order is None:
            raise ValidationError({"quantity": ["Order at least one."]})
        return Response({"id": order.pk, "item": order.item}, status=201)

    def ninja_operation(request: HttpRequest) -> Any:
        from ninja.errors import HttpError
        from ninja.responses import Status

        order = behaviour.order(json.loads(request.body))
        if order is None:
            raise HttpError(400, "Order at least one.")
        return Status(201, {"id": order.pk, "item": order.item})

    views = {
        "function": function_view,
        "template": template_view,
        "drf": drf_handler,
        "ninja": ninja_operation,
    }
    behaviour.url = mount(setup, views[setup.view], options)
    return behaviour


def post(setup: Setup, url: str, data: dict[str, Any], key: str) -> Any:
    """POST ``data`` as JSON with ``key``, through the setup's handler."""
    args = (url, json.dumps(data))
    kwargs = {"content_type": "application/json", "headers": {"Idempotency-Key": key}}
    if setup.handler == "asgi":
        return async_to_sync(AsyncClient().post)(*args, **kwargs)
    return Client().post(*args, **kwargs)


def orders_of(item: str) -> int:
    count: int = Order.objects.filter(item=item).count()
    return count


# -- faults made by the database itself --------------------------------------------------------


@pytest.fixture
def failing_statement() -> Iterator[Callable[[str], None]]:
    """``failing_statement("INSERT")`` makes every INSERT on the keys table
    fail (a claim); ``failing_statement("COMPLETE")`` every UPDATE that marks
    a key completed. On the database the keys are routed to; dropped at the
    end of the test."""
    installed: list[tuple[Any, str]] = []

    def install(which: str) -> None:
        name = f"idempotency_fail_{which.lower()}"
        event, condition = (
            ("INSERT", "") if which == "INSERT" else ("UPDATE", "NEW.state = 'completed'")
        )
        keys_connection = connections[router.db_for_write(IdempotencyKey)]
        vendor = keys_connection.vendor
        with keys_connection.cursor() as cursor:
            if vendor == "postgresql":
                cursor.execute(
                    f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'injected fault'; END $$ LANGUAGE plpgsql"
                )
                when = f"WHEN ({condition})" if condition else ""
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {KEYS_TABLE} "
                    f"FOR EACH ROW {when} EXECUTE FUNCTION {name}()"
                )
            elif vendor == "mysql":
                test = condition or "TRUE"
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {KEYS_TABLE} FOR EACH ROW "
                    f"BEGIN IF {test} THEN SIGNAL SQLSTATE '45000' "
                    "SET MESSAGE_TEXT = 'injected fault'; END IF; END"
                )
            else:
                when = f"WHEN {condition}" if condition else ""
                cursor.execute(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {KEYS_TABLE} {when} "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
        installed.append((keys_connection, name))

    yield install
    for keys_connection, name in installed:
        with keys_connection.cursor() as cursor:
            if keys_connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {name} ON {KEYS_TABLE}")
                cursor.execute(f"DROP FUNCTION IF EXISTS {name}()")
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")


# -- the invariants -----------------------------------------------------------------------------


@pytest.mark.parametrize("setup", setups())
def test_a_success_commits_and_its_retry_is_a_replay(
    setup: Setup, configure: Any, mount: Mount
) -> None:
    view = serve_view(mount, setup, configure(setup))

    first = post(setup, view.url, {"item": "tea", "then": "ok"}, "key-a")
    retry = post(setup, view.url, {"item": "tea", "then": "ok"}, "key-a")

    assert first.status_code == 201
    assert orders_of("tea") == 1
    assert replayed(retry)
    assert retry.status_code == 201
    assert json.loads(retry.content) == json.loads(first.content)
    assert view.runs == 1


@pytest.mark.parametrize("setup", setups(stores=("database", "router")))
def test_a_failed_completion_never_answers_a_success_for_lost_writes(
    setup: Setup,
    configure: Any,
    mount: Mount,
    failing_statement: Callable[[str], None],
) -> None:
    view = serve_view(mount, setup, configure(setup))
    failing_statement("COMPLETE")

    first = post(setup, view.url, {"item": "tea", "then": "ok"}, "key-b")

    if first.status_code < 300:
        assert orders_of("tea") == 1, "a success was sent for writes that did not commit"
    if setup.mode == "atomic":
        # The completion is in the view's transaction: both roll back, the
        # client is told so, and the key is free for the retry.
        problem(first, 503, "idempotency_storage_unavailable")
        assert orders_of("tea") == 0
        retry = post(setup, view.url, {"item": "tea", "then": "ok"}, "key-b")
        assert retry.status_code == 503
        assert orders_of("tea") == 0
    else:
        # The key completes after the view's writes commit: the writes stay,
        # the client gets its answer, and the claim stays in progress until
        # its lease passes (a retry meanwhile runs nothing).
        assert first.status_code == 201
        retry = post(setup, view.url, {"item": "tea", "then": "ok"}, "key-b")
        problem(retry, 409, "idempotency_key_in_use")
        assert view.runs == 1
        assert orders_of("tea") == 1


@pytest.mark.parametrize("setup", setups())
def test_an_error_answer_is_stored_and_replayed(
    setup: Setup, configure: Any, mount: Mount, db_vendor: str
) -> None:
    view = serve_view(mount, setup, configure(setup))

    first = post(setup, view.url, {"item": "tea", "quantity": 0}, "key-c")
    retry = post(setup, view.url, {"item": "tea", "quantity": 0}, "key-c")

    assert first.status_code == 400
    assert retry.status_code == 400
    assert orders_of("tea") == 0
    if _claims_join_a_rolled_back_transaction(setup, db_vendor):
        # SQLite has one writer, so the claim is in the request's transaction,
        # which DRF rolls back with its answer: the retry runs the view again.
        assert not replayed(retry)
        assert view.runs == 2
    else:
        assert replayed(retry)
        assert view.runs == 1


def _claims_join_a_rolled_back_transaction(setup: Setup, db_vendor: str) -> bool:
    """DRF rolls back ``ATOMIC_REQUESTS`` transactions when it answers an
    exception; on SQLite, claims on a database with ``ATOMIC_REQUESTS`` join
    that transaction (the router's alias has none). In atomic mode, DRF rolls
    back the view's own transaction, and the answer is stored apart from it."""
    return (
        db_vendor == "sqlite"
        and setup.view == "drf"
        and setup.atomic_requests
        and setup.store == "database"
        and setup.mode == "default"
    )


@pytest.mark.parametrize("setup", setups())
def test_a_success_whose_writes_roll_back_is_never_sent(
    setup: Setup, configure: Any, mount: Mount
) -> None:
    view = serve_view(mount, setup, configure(setup))

    first = post(setup, view.url, {"item": "tea", "then": "doom"}, "key-d")
    committed = orders_of("tea")
    retry = post(setup, view.url, {"item": "tea", "then": "doom"}, "key-d")

    if first.status_code < 300:
        assert committed == 1, "a success was sent for writes that did not commit"
    if setup.in_transaction:
        problem(first, 503, "idempotency_transaction_rolled_back")
        assert committed == 0
        # The key was released: the retry runs the view, which commits.
        assert retry.status_code == 201
        assert not replayed(retry)
        assert view.runs == 2
    else:
        assert first.status_code == 201
        assert replayed(retry)
        assert view.runs == 1
    assert orders_of("tea") == 1


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
@pytest.mark.parametrize("setup", setups())
def test_a_store_that_fails_the_claim(
    setup: Setup,
    fail_open: bool,
    configure: Any,
    mount: Mount,
    failing_statement: Callable[[str], None],
    settings: Any,
) -> None:
    store = configure(setup)
    if setup.store == "redis":
        store = _unreachable_redis_store(settings)
    else:
        failing_statement("INSERT")
    view = serve_view(mount, setup, store, fail_open=fail_open)

    answer = post(setup, view.url, {"item": "tea", "then": "ok"}, "key-e")

    if fail_open:
        # The view runs as it would unprotected: its transaction is intact.
        assert answer.status_code == 201
        assert orders_of("tea") == 1
    else:
        problem(answer, 503, "idempotency_storage_unavailable")
        assert orders_of("tea") == 0
        assert view.runs == 0


def _unreachable_redis_store(settings: Any) -> Any:
    pytest.importorskip("django_redis")
    from django_idempotency.storage import RedisStorage

    settings.CACHES = {
        **settings.CACHES,
        "idempotency_down": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",  # the discard port: closed
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        },
    }
    return RedisStorage(cache_alias="idempotency_down")


def _claims_commit_at_once(setup: Setup) -> bool:
    """Everywhere but on SQLite under ``ATOMIC_REQUESTS``, where claims join
    the request's transaction (one writer) and a duplicate waits for it."""
    joins = connection.vendor == "sqlite" and setup.atomic_requests and setup.store == "database"
    return not joins


@pytest.mark.parametrize(
    "setup",
    [
        param
        for param in setups()
        if param.values[0].handler == "wsgi"
        and param.values[0].conn_max_age == 0
        and _claims_commit_at_once(param.values[0])
    ],
)
@pytest.mark.parametrize("past_its_lease", [False, True], ids=["", "past-its-lease"])
def test_a_duplicate_is_answered_while_the_first_runs(
    setup: Setup, configure: Any, mount: Mount, past_its_lease: bool
) -> None:
    """The claim commits at once, whatever transaction the view runs in, so a
    duplicate is answered 409 at once (not held on a lock) and the view runs
    once; also when it comes after the claim's first lease, which the live
    request renews."""
    entered, release = threading.Event(), threading.Event()
    store = configure(setup)
    view = serve_view(mount, setup, store, **({"lock_timeout": 0.6} if past_its_lease else {}))
    original = view.order

    def held(data: dict[str, Any]) -> Order | None:
        entered.set()
        assert release.wait(10)
        return original(data)

    view.order = held  # type: ignore[method-assign]
    answers: list[Any] = []

    def first() -> None:
        try:
            answers.append(post(setup, view.url, {"item": "tea"}, "key-f"))
        finally:
            connections.close_all()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(10)
        view.order = original  # type: ignore[method-assign]
        if past_its_lease:
            time.sleep(1.5)  # past two leases of 0.6 s
        problem(post(setup, view.url, {"item": "tea"}, "key-f"), 409, "idempotency_key_in_use")
    finally:
        release.set()
        thread.join()
    assert answers[0].status_code == 201
    assert replayed(post(setup, view.url, {"item": "tea"}, "key-f"))
    assert orders_of("tea") == 1
    assert orders() == 1
