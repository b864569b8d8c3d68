"""``IdempotencyMiddleware``: the URLs of ``PROTECTED_URLS`` protected
without a decorator, through Django's whole request handling.

The demo's shop (``demo/shop.py``, the ``shop`` namespace of the test
project's ``PROTECTED_URLS``) is served by the project's own URLconf; the
other tests mount views of their own with the ``serve`` fixture.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings as project
from django.core.checks import CheckMessage, Tags, run_checks
from django.core.management import call_command
from django.db import connection, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client
from django.urls import include, path
from django.utils.decorators import method_decorator
from django.views import View
from factories import UserFactory
from helpers import (
    RUNS_SYSTEM_CHECKS,
    acreate_order,
    create_order,
    orders,
    problem,
    replayed,
    send,
)

from demo import shop
from django_idempotency import checks
from django_idempotency.conf import OptionError
from django_idempotency.decorators import idempotency_exempt, idempotent
from django_idempotency.testing import assert_refuses_changed_body, assert_replays

pytestmark = pytest.mark.django_db

MIDDLEWARE = "django_idempotency.middleware.IdempotencyMiddleware"


class Handler:
    """Requests through the WSGI handler (``Client``) or the ASGI one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.client: Any = AsyncClient() if kind == "asgi" else Client()

    def post(self, url: str, data: Any = None, key: str | None = "key-1", **headers: str) -> Any:
        if key is not None:
            headers["Idempotency-Key"] = key
        body = json.dumps(data if data is not None else {"item": "tea"})
        call = self.client.post
        if self.kind == "asgi":
            call = async_to_sync(call)
        return call(url, body, content_type="application/json", headers=headers)


@pytest.fixture(params=["wsgi", "asgi"])
def handler(request: pytest.FixtureRequest) -> Handler:
    return Handler(request.param)


# -- the demo's shop: no view decorated ------------------------------------------------------

SHOP = ["/shop/orders/", "/shop/async/orders/", "/shop/cbv/orders/"]
if project.HAS_DRF:
    SHOP.append("/shop/api/orders/")


@pytest.mark.parametrize("url", SHOP)
def test_a_retry_under_a_protected_namespace_is_a_replay(handler: Handler, url: str) -> None:
    assert_replays(handler.client, url, {"item": "tea"})
    assert orders() == 1


@pytest.mark.parametrize("url", SHOP)
def test_a_key_reused_with_another_body_is_refused(handler: Handler, url: str) -> None:
    assert_refuses_changed_body(handler.client, url, {"item": "tea"}, {"item": "coffee"})
    assert orders() == 1


def test_safe_methods_pass_through(client: Client, claimed: list[Any]) -> None:
    first = client.get("/shop/orders/", headers={"Idempotency-Key": "key-1"})
    handler_post = Handler("wsgi").post("/shop/orders/")
    second = client.get("/shop/orders/", headers={"Idempotency-Key": "key-1"})

    assert json.loads(first.content) == {"orders": 0}
    assert handler_post.status_code == 201
    assert json.loads(second.content) == {"orders": 1}
    assert len(claimed) == 1


def test_an_exempt_view_runs_every_time(handler: Handler) -> None:
    before = shop.basket_posts[0]

    handler.post("/shop/basket/")
    handler.post("/shop/basket/")

    assert shop.basket_posts[0] == before + 2


def test_a_view_protected_by_its_decorator_keeps_its_own_options(
    handler: Handler, claimed: list[Any]
) -> None:
    # /shop/express/orders/ waits for the first answer (on_conflict="wait").
    handler.post("/shop/express/orders/")
    retry = handler.post("/shop/express/orders/")

    assert replayed(retry)
    assert len(claimed) == 1
    assert orders() == 1


# -- which URLs: PROTECTED_URLS ---------------------------------------------------------------


def _mounted(serve: Callable[..., str]) -> None:
    """Orders at /a/b/orders/ (namespaces a and a:b), /a/other/ (a:other),
    /c/orders/ (c:orders) and /plain/ (unnamed, no namespace)."""
    inner = ([path("orders/", create_order, name="orders")], "b")
    outer = ([path("b/", include(inner)), path("other/", create_order, name="other")], "a")
    serve(include(outer), "a/")
    serve(include(([path("orders/", create_order, name="orders")], "c")), "c/")
    serve(create_order, "plain/")


@pytest.mark.parametrize(
    ("entries", "protected"),
    [
        (["a:"], {"/a/b/orders/", "/a/other/"}),
        (["a:b:"], {"/a/b/orders/"}),
        (["a:other", "c:orders"], {"/a/other/", "/c/orders/"}),
        (["/plain/"], {"/plain/"}),
        (["/a/b/"], {"/a/b/orders/"}),
        (["/"], {"/a/b/orders/", "/a/other/", "/c/orders/", "/plain/"}),
        ([], set()),
    ],
    ids=["namespace", "nested-namespace", "names", "path", "path-prefix", "everything", "none"],
)
def test_what_protected_urls_protects(
    serve: Callable[..., str],
    idempotency_settings: Any,
    entries: list[str],
    protected: set[str],
) -> None:
    _mounted(serve)
    idempotency_settings(PROTECTED_URLS=entries)
    urls = ["/a/b/orders/", "/a/other/", "/c/orders/", "/plain/"]

    for url in urls:
        Handler("wsgi").post(url, key=f"key-{url}")
        retry = Handler("wsgi").post(url, key=f"key-{url}")
        assert replayed(retry) == (url in protected), url

    assert orders() == len(urls) * 2 - len(protected)


class SlottedView:
    """A view that is an instance of a class with ``__slots__``: it takes no
    weak reference."""

    __slots__ = ()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return create_order(request)


def test_a_view_that_takes_no_weak_reference_is_protected(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    url = serve(SlottedView(), "slotted/")
    idempotency_settings(PROTECTED_URLS=["/slotted/"])

    first = Handler("wsgi").post(url)
    retry = Handler("wsgi").post(url)

    assert replayed(retry)
    assert retry.content == first.content
    assert orders() == 1


def test_a_changed_setting_applies_to_the_next_request(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    url = serve(create_order, "plain/")
    idempotency_settings(PROTECTED_URLS=[])
    Handler("wsgi").post(url)
    assert not replayed(Handler("wsgi").post(url))

    idempotency_settings(PROTECTED_URLS=["/plain/"], TTL=60)
    Handler("wsgi").post(url, key="key-2")
    assert replayed(Handler("wsgi").post(url, key="key-2"))


def test_the_options_of_the_setting_apply(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    url = serve(create_order, "plain/")
    idempotency_settings(PROTECTED_URLS=["/plain/"], REQUIRED=True)

    problem(Handler("wsgi").post(url, key=None), 400, "idempotency_key_missing")
    assert orders() == 0


def test_a_request_of_another_client_with_the_same_key_runs(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    """The default scope sees the user that the authentication middleware set."""
    url = serve(create_order, "plain/")
    idempotency_settings(PROTECTED_URLS=["/plain/"])
    alice, bob = Client(), Client()
    alice.force_login(UserFactory())
    bob.force_login(UserFactory())

    send(alice, url)
    send(bob, url)

    assert replayed(send(alice, url))
    assert orders() == 2


# -- views that protect themselves, or opt out --------------------------------------------------


def _replaying_200(view: Any) -> Any:
    return idempotent(replay_status=200)(view)


class RequiredCBV(View):
    @method_decorator(idempotent(replay_status=200))
    def post(self, request: HttpRequest) -> HttpResponse:
        return create_order(request)


class RequiredDispatchCBV(View):
    @method_decorator(idempotent(replay_status=200))
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return super().dispatch(request, *args, **kwargs)

    def post(self, request: HttpRequest) -> HttpResponse:
        return create_order(request)


def _drf_views() -> dict[str, Any]:
    pytest.importorskip("rest_framework")
    from rest_framework.decorators import api_view
    from rest_framework.permissions import AllowAny
    from rest_framework.views import APIView
    from rest_framework.viewsets import ViewSet

    from django_idempotency.rest_framework import IdempotencyMixin

    class Mixin(IdempotencyMixin, APIView):
        permission_classes = [AllowAny]
        idempotency_replay_status = 200

        def post(self, request: Any) -> HttpResponse:
            return create_order(request)

    class Handlers(APIView):
        permission_classes = [AllowAny]

        @method_decorator(idempotent(replay_status=200))
        def post(self, request: Any) -> HttpResponse:
            return create_order(request)

    class Actions(ViewSet):
        permission_classes = [AllowAny]

        @method_decorator(idempotent(replay_status=200))
        def create(self, request: Any) -> HttpResponse:
            return create_order(request)

    @api_view(["POST"])
    @idempotent(replay_status=200)
    def below(request: Any) -> HttpResponse:
        return create_order(request)

    return {
        "drf-mixin": Mixin.as_view(),
        "drf-handler": Handlers.as_view(),
        "drf-viewset-action": Actions.as_view({"post": "create"}),
        "drf-api-view-above": idempotent(replay_status=200)(api_view(["POST"])(create_order)),
        "drf-api-view-below": below,
    }


SELF_PROTECTED = [
    "function",
    "async-function",
    "cbv-handler",
    "cbv-dispatch",
    "drf-mixin",
    "drf-handler",
    "drf-viewset-action",
    "drf-api-view-above",
    "drf-api-view-below",
]


@pytest.mark.parametrize("kind", SELF_PROTECTED)
def test_a_view_that_protects_itself_is_left_to_its_own_options(
    serve: Callable[..., str], idempotency_settings: Any, claimed: list[Any], kind: str
) -> None:
    views = {
        "function": lambda: _replaying_200(create_order),
        "async-function": lambda: _replaying_200(acreate_order),
        "cbv-handler": RequiredCBV.as_view,
        "cbv-dispatch": RequiredDispatchCBV.as_view,
    }
    view = views[kind]() if kind in views else _drf_views()[kind]
    url = serve(view, "own/")
    idempotency_settings(PROTECTED_URLS=["/own/"])

    first = Handler("wsgi").post(url)
    retry = Handler("wsgi").post(url)

    assert first.status_code == 201
    # Its own replay_status, where the setting replays the first status:
    assert replayed(retry)
    assert retry.status_code == 200
    assert len(claimed) == 1
    assert orders() == 1


class BasketView(View):
    def post(self, request: HttpRequest) -> HttpResponse:
        return create_order(request)


@pytest.mark.parametrize("kind", ["function", "as-view", "class", "dispatch"])
def test_an_exempt_view_is_not_protected(
    serve: Callable[..., str], idempotency_settings: Any, kind: str
) -> None:
    if kind == "function":
        view: Any = idempotency_exempt(lambda request: create_order(request))
    elif kind == "as-view":
        view = idempotency_exempt(BasketView.as_view())
    elif kind == "class":
        view = idempotency_exempt(type("Exempt", (BasketView,), {})).as_view()
    else:
        dispatch = method_decorator(idempotency_exempt, name="dispatch")
        view = dispatch(type("Exempt", (BasketView,), {})).as_view()
    url = serve(view, "basket/")
    idempotency_settings(PROTECTED_URLS=["/basket/"])

    Handler("wsgi").post(url)
    assert not replayed(Handler("wsgi").post(url))
    assert orders() == 2


# -- DRF views without the mixin: the mixin's stages, after DRF's checks --------------------------


def _token_protected(**attributes: Any) -> Any:
    pytest.importorskip("rest_framework")
    from rest_framework.authentication import TokenAuthentication
    from rest_framework.permissions import IsAuthenticated
    from rest_framework.views import APIView

    def post(self: Any, request: Any) -> HttpResponse:
        return create_order(request)

    attributes = {
        "authentication_classes": [TokenAuthentication],
        "permission_classes": [IsAuthenticated],
        "post": post,
        **attributes,
    }
    return type("Orders", (APIView,), attributes).as_view()


def _token(user: Any) -> dict[str, str]:
    from rest_framework.authtoken.models import Token

    return {"Authorization": f"Token {Token.objects.create(user=user).key}"}


def test_a_drf_request_refused_by_its_permissions_claims_nothing(
    serve: Callable[..., str], idempotency_settings: Any, handler: Handler, claimed: list[Any]
) -> None:
    url = serve(_token_protected(), "drf/")
    idempotency_settings(PROTECTED_URLS=["/drf/"])

    refused = handler.post(url)
    accepted = handler.post(url, **_token(UserFactory()))

    assert refused.status_code == 401
    assert accepted.status_code == 201
    assert not replayed(accepted)
    assert len(claimed) == 1


def test_a_drf_request_is_scoped_to_the_user_drf_authenticated(
    serve: Callable[..., str], idempotency_settings: Any, handler: Handler
) -> None:
    url = serve(_token_protected(), "drf/")
    idempotency_settings(PROTECTED_URLS=["/drf/"])
    alice, bob = _token(UserFactory()), _token(UserFactory())

    handler.post(url, **alice)
    bobs = handler.post(url, **bob)
    retry = handler.post(url, **alice)

    assert not replayed(bobs)
    assert replayed(retry)
    assert orders() == 2


def test_a_throttled_drf_request_claims_nothing(
    serve: Callable[..., str], idempotency_settings: Any, claimed: list[Any]
) -> None:
    pytest.importorskip("rest_framework")
    from rest_framework.throttling import BaseThrottle

    class NoneAllowed(BaseThrottle):
        def allow_request(self, request: Any, view: Any) -> bool:
            return False

    url = serve(_token_protected(throttle_classes=[NoneAllowed]), "drf/")
    idempotency_settings(PROTECTED_URLS=["/drf/"])

    assert Handler("wsgi").post(url, **_token(UserFactory())).status_code == 429
    assert claimed == []


# -- transactions: ATOMIC_REQUESTS as Django applies it ------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("atomic_requests")
def test_a_protected_view_runs_in_the_request_transaction(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    seen: list[bool] = []
    doomed = [True]

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(connection.in_atomic_block)
        response = create_order(request)
        if doomed[0]:  # the first time: a success whose writes roll back
            doomed[0] = False
            transaction.set_rollback(True)
        return response

    url = serve(view, "plain/")
    idempotency_settings(PROTECTED_URLS=["/plain/"])

    first = Handler("wsgi").post(url)
    problem(first, 503, "idempotency_transaction_rolled_back")
    assert orders() == 0
    retry = Handler("wsgi").post(url)
    assert retry.status_code == 201
    assert replayed(Handler("wsgi").post(url))
    assert orders() == 1
    assert seen == [True, True]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("atomic_requests")
def test_a_non_atomic_view_stays_out_of_the_request_transaction(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    seen: list[bool] = []

    @transaction.non_atomic_requests
    def view(request: HttpRequest) -> HttpResponse:
        seen.append(connection.in_atomic_block)
        return create_order(request)

    url = serve(view, "plain/")
    idempotency_settings(PROTECTED_URLS=["/plain/"])

    Handler("wsgi").post(url)
    assert replayed(Handler("wsgi").post(url))
    assert seen == [False]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("atomic_requests")
def test_an_async_view_under_atomic_requests_fails_as_it_does_unprotected(
    serve: Callable[..., str], idempotency_settings: Any
) -> None:
    url = serve(acreate_order, "plain/")
    idempotency_settings(PROTECTED_URLS=["/plain/"])

    with pytest.raises(RuntimeError, match="ATOMIC_REQUESTS with async views"):
        Handler("wsgi").post(url)
    idempotency_settings(PROTECTED_URLS=[])
    with pytest.raises(RuntimeError, match="ATOMIC_REQUESTS with async views"):
        Handler("wsgi").post(url)


# -- exceptions -----------------------------------------------------------------------------------


def test_a_view_that_raises_releases_its_key(
    serve: Callable[..., str], idempotency_settings: Any, handler: Handler
) -> None:
    failures = [True]

    def view(request: HttpRequest) -> HttpResponse:
        if failures.pop() if failures else False:
            raise ValueError("boom")
        return create_order(request)

    url = serve(view, "plain/")
    idempotency_settings(PROTECTED_URLS=["/plain/"])
    handler.client.raise_request_exception = False

    assert handler.post(url).status_code == 500
    assert handler.post(url).status_code == 201
    assert replayed(handler.post(url))
    assert orders() == 1


def test_http404_is_answered_404(
    serve: Callable[..., str], idempotency_settings: Any, handler: Handler
) -> None:
    def view(request: HttpRequest) -> HttpResponse:
        raise Http404("no such basket")

    url = serve(view, "plain/")
    idempotency_settings(PROTECTED_URLS=["/plain/"])

    assert handler.post(url).status_code == 404


# -- configuration errors and system checks -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("shop:", "expected a list of namespaces"),
        ([3], "3 is not a string"),
        (["shop: "], "is not a namespace, a URL name or a path"),
        ([":"], "is not a namespace"),
    ],
)
def test_an_invalid_protected_urls_is_e003(settings: Any, value: Any, message: str) -> None:
    settings.IDEMPOTENCY = {"PROTECTED_URLS": value}

    [error] = checks.check_settings()

    assert error.id == "django_idempotency.E003"
    assert "PROTECTED_URLS" in error.msg
    assert message in error.msg
    with pytest.raises(OptionError, match=message):
        Handler("wsgi").post("/shop/orders/")


def test_protected_urls_is_no_per_view_option() -> None:
    with pytest.raises(TypeError, match="only in the IDEMPOTENCY setting, as 'PROTECTED_URLS'"):
        idempotent(protected_urls=["/"])


def _middleware_checks() -> list[CheckMessage]:
    return [
        m
        for m in run_checks(tags=[Tags.compatibility])
        if (m.id or "").startswith("django_idempotency.")
    ]


class Catching:
    """A middleware with ``process_exception()``."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> Any:
        return JsonResponse({"error": str(exception)}, status=500)


CSRF = "django.middleware.csrf.CsrfViewMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"


def test_the_test_project_order_gives_no_message() -> None:
    assert _middleware_checks() == []


@RUNS_SYSTEM_CHECKS
def test_e040_a_process_view_after_the_middleware(settings: Any) -> None:
    settings.MIDDLEWARE = [SESSIONS, MIDDLEWARE, CSRF, AUTH]

    [error] = _middleware_checks()

    assert error.id == "django_idempotency.E040"
    assert "before CsrfViewMiddleware" in error.msg
    assert "process_view() would then not run" in error.msg
    with pytest.raises(Exception, match=r"django_idempotency\.E040"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_w040_protected_urls_without_the_middleware(settings: Any) -> None:
    settings.MIDDLEWARE = [SESSIONS, CSRF, AUTH]

    [warning] = _middleware_checks()

    assert warning.id == "django_idempotency.W040"
    assert "not protected" in warning.msg


def test_the_middleware_without_protected_urls_gives_no_message(settings: Any) -> None:
    settings.IDEMPOTENCY = {}

    assert _middleware_checks() == []
    assert Handler("wsgi").post("/shop/orders/").status_code == 201
    assert not replayed(Handler("wsgi").post("/shop/orders/"))


def test_neither_the_middleware_nor_protected_urls_gives_no_message(settings: Any) -> None:
    settings.MIDDLEWARE = [SESSIONS, CSRF, AUTH]
    settings.IDEMPOTENCY = {}

    assert _middleware_checks() == []


def test_w042_a_process_exception_the_middleware_bypasses(settings: Any) -> None:
    settings.MIDDLEWARE = [SESSIONS, CSRF, AUTH, f"{__name__}.Catching", MIDDLEWARE]

    [warning] = _middleware_checks()

    assert warning.id == "django_idempotency.W042"
    assert "process_exception() of Catching" in warning.msg
