"""Every option of ``@idempotent`` and of the DRF ``IdempotencyMixin``, set on
the view and through the ``IDEMPOTENCY`` setting, and how the two combine.

The ``configure`` fixture runs each option test four times: with the option on
the decorator; with the bare decorator and the option in the settings dict, set
after the view was decorated, which shows settings are read when used; as an
``idempotency_*`` attribute of an ``APIView`` with the mixin; and returned by a
``get_idempotency_options()`` of a ``ModelViewSet`` with the mixin. The DRF
runs are skipped where Django REST framework is not installed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.test import Client, override_settings
from factories import UserFactory
from helpers import (
    KEY,
    UUID_PATTERN,
    answering,
    counting,
    create_order,
    drf_protected,
    external_reference,
    in_flight_claim,
    only_http_200,
    orders,
    problem,
    replayed,
    send,
)

from demo.models import Order
from django_idempotency import conf, scope, signals
from django_idempotency.decorators import idempotent
from django_idempotency.errors import (
    IdempotencyError,
    KeyInUse,
    KeyInvalid,
    KeyMismatch,
    KeyMissing,
    ResponseNotStored,
    StorageUnavailable,
)
from django_idempotency.fingerprint import json_fingerprint
from django_idempotency.models import IdempotencyKey
from django_idempotency.responses import StoredResponse
from django_idempotency.storage import Claim, DatabaseStorage, RequestKey

TXCLOUD_PATTERN = r"[A-Za-z0-9_-]{10,255}"


# -- views and helpers referenced by dotted path ---------------------------------------------


def api_key_scope(request: HttpRequest) -> str:
    """TXCloud: keys belong to an API key and an endpoint."""
    return f"{request.headers.get('X-Api-Key', '')}|{scope.endpoint(request)}"


def constant_fingerprint(request: HttpRequest) -> str:
    return "same"


class CountingStorage(DatabaseStorage):
    """The database store, counting the claims it is asked for."""

    claims: ClassVar[list[str]] = []

    def claim(self, key: RequestKey, *, ttl: float, lease: float) -> Claim:
        type(self).claims.append(key.key)
        return super().claim(key, ttl=ttl, lease=lease)


HERE = __name__


def dotted(name: str) -> str:
    return f"{HERE}.{name}"


@pytest.fixture(autouse=True)
def _reset_counting_storage() -> None:
    CountingStorage.claims = []


Configure = Callable[..., Callable[..., Any]]


def protected_by(adapter: str, view: Callable[..., Any], options: dict[str, Any]) -> Any:
    """``view`` with ``options`` of its own: given to the decorator, or to a DRF
    view with the mixin, as ``idempotency_*`` attributes of an ``APIView``
    (``"apiview"``) or returned by ``get_idempotency_options()`` of a
    ``ModelViewSet`` (``"viewset"``)."""
    if adapter == "decorator":
        return idempotent(**options)(view)
    return drf_protected(view, options, viewset=adapter == "viewset")


@pytest.fixture(params=["decorator", "setting", "apiview", "viewset"])
def configure(
    request: pytest.FixtureRequest, idempotency_settings: Callable[..., None]
) -> Configure:
    """``configure(view, **options)``: the view protected with ``options``, given
    to the decorator or, after decorating, set in ``IDEMPOTENCY``; or served by
    a DRF ``APIView`` with the mixin and the options as ``idempotency_*``
    attributes, or by a ``ModelViewSet`` with the mixin and the options
    returned by ``get_idempotency_options()``."""
    if request.param in ("apiview", "viewset"):
        pytest.importorskip("rest_framework")

    def make(view: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        if request.param != "setting":
            return protected_by(request.param, view, options)
        protected = idempotent(view)
        idempotency_settings(**{name.upper(): value for name, value in options.items()})
        return protected

    return make


@pytest.fixture(params=["decorator", "apiview", "viewset"])
def per_view(request: pytest.FixtureRequest) -> Configure:
    """``per_view(view, **options)``: the view with options of its own, for the
    tests of how they combine with the setting: on the decorator, as the
    mixin's attributes, or from ``get_idempotency_options()`` (see :func:`protected_by`)."""
    if request.param != "decorator":
        pytest.importorskip("rest_framework")

    def make(view: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        return protected_by(request.param, view, options)

    return make


# -- where the key comes from ----------------------------------------------------------------


@pytest.mark.django_db
class TestHeader:
    def test_key_is_read_from_the_configured_header(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, header="X-Idempotency-Key"))

        first = send(client, url, key_header="X-Idempotency-Key")
        retry = send(client, url, key_header="X-Idempotency-Key")

        assert replayed(retry)
        assert retry.content == first.content
        assert orders() == 1

    def test_default_header_is_then_ignored(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, header="X-Idempotency-Key"))

        send(client, url)
        second = send(client, url)

        assert not replayed(second)
        assert orders() == 2

    def test_header_name_is_case_insensitive(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, header="x-idempotency-key"))

        send(client, url, key_header="X-IDEMPOTENCY-KEY")
        retry = send(client, url, key_header="X-Idempotency-Key")

        assert replayed(retry)


@pytest.mark.django_db
class TestKeyFunc:
    def test_key_from_a_json_body_field(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, key_func=external_reference))
        body = {"externalReference": "tx-000123", "amount": 10}

        first = send(client, url, body, key=None)
        retry = send(client, url, body, key=None)

        assert first.status_code == 201
        assert replayed(retry)
        assert orders() == 1
        assert IdempotencyKey.objects.get().key == "tx-000123"

    def test_numeric_business_id(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, key_func=dotted("external_reference")))
        body = {"externalReference": 90210, "amount": 10}

        send(client, url, body, key=None)
        retry = send(client, url, body, key=None)

        assert replayed(retry)
        assert orders() == 1
        assert IdempotencyKey.objects.get().key == "90210"

    def test_key_func_overrides_the_header(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, key_func=external_reference))
        body = {"externalReference": "tx-000124"}

        send(client, url, body, key="header-one")
        retry = send(client, url, body, key="header-two")

        assert replayed(retry)
        assert orders() == 1

    def test_no_key_from_key_func_means_unprotected(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, key_func=external_reference))

        send(client, url, {"amount": 1}, key="header-key")
        second = send(client, url, {"amount": 1}, key="header-key")

        assert not replayed(second)
        assert orders() == 2
        assert not IdempotencyKey.objects.exists()

    def test_key_from_key_func_is_validated(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, key_func=external_reference))

        response = send(client, url, {"externalReference": "x" * 300}, key=None)

        problem(response, 400, "idempotency_key_invalid")
        assert orders() == 0


@pytest.mark.django_db
class TestRequired:
    def test_missing_key_is_refused(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, required=True))

        problem(send(client, url, key=None), 400, "idempotency_key_missing")

        assert orders() == 0
        assert send(client, url).status_code == 201

    def test_required_with_key_func(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, required=True, key_func=external_reference))

        problem(send(client, url, {"amount": 1}), 400, "idempotency_key_missing")
        assert orders() == 0


@pytest.mark.django_db
class TestKeyPattern:
    @pytest.mark.parametrize("key", ["not-a-uuid", "3F2504E0-4F89-11D3-9A0C-0305E82C3301", ""])
    def test_uuid_pattern_refuses_other_keys(
        self, client: Client, serve: Callable[..., str], configure: Configure, key: str
    ) -> None:
        url = serve(configure(create_order, key_pattern=UUID_PATTERN))

        problem(send(client, url, key=key), 400, "idempotency_key_invalid")
        assert orders() == 0

    def test_uuid_pattern_accepts_a_uuid(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, key_pattern=UUID_PATTERN))
        key = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"

        send(client, url, key=key)

        assert replayed(send(client, url, key=key))

    @pytest.mark.parametrize(
        ("key", "valid"),
        [
            ("abc_DEF-12", True),
            ("a" * 255, True),
            ("short", False),
            ("a" * 256, False),
            ("has spaces in it", False),
            ("dots.are.not.allowed", False),
        ],
    )
    def test_txcloud_pattern(
        self,
        client: Client,
        serve: Callable[..., str],
        configure: Configure,
        key: str,
        valid: bool,
    ) -> None:
        url = serve(configure(create_order, key_pattern=TXCLOUD_PATTERN))

        response = send(client, url, key=key)

        if valid:
            assert response.status_code == 201
        else:
            problem(response, 400, "idempotency_key_invalid")
            assert orders() == 0

    def test_compiled_pattern(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, key_pattern=re.compile(r"ord_[0-9]+")))

        problem(send(client, url, key="ord_x"), 400, "idempotency_key_invalid")
        assert send(client, url, key="ord_12").status_code == 201


@pytest.mark.django_db
class TestMethods:
    def test_post_only_leaves_put_unprotected(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, methods=("POST",)))

        send(client, url, method="put")
        put_again = send(client, url, method="put")
        send(client, url, key="post-key")
        post_again = send(client, url, key="post-key")

        assert not replayed(put_again)
        assert replayed(post_again)
        assert orders() == 3

    def test_names_are_case_insensitive_and_may_include_get(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, methods=["get", "delete"]))

        send(client, url, method="get")
        get_again = send(client, url, method="get")
        send(client, url, key="post-key")
        post_again = send(client, url, key="post-key")

        assert replayed(get_again)
        assert not replayed(post_again)
        assert orders() == 3


# -- whose key it is, and which request ------------------------------------------------------


@pytest.mark.django_db
class TestScopeFunc:
    def test_principal_scope_shares_keys_across_endpoints(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        payments = serve(configure(create_order, scope_func=scope.principal_scope), "payments/")
        refunds = serve(idempotent(scope_func=scope.principal_scope)(create_order), "refunds/")
        client.force_login(UserFactory())
        send(client, payments)

        response = send(client, refunds)

        problem(response, 422, "idempotency_key_mismatch")
        assert orders() == 1

    def test_principal_scope_still_separates_users(
        self, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, scope_func="django_idempotency.scope.principal_scope"))
        alice, bob = Client(), Client()
        alice.force_login(UserFactory())
        bob.force_login(UserFactory())

        send(alice, url)
        response = send(bob, url)

        assert not replayed(response)
        assert orders() == 2

    def test_global_scope_shares_keys_between_users(
        self, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, scope_func=scope.global_scope))
        alice, bob = Client(), Client()
        alice.force_login(UserFactory())
        bob.force_login(UserFactory())
        first = send(alice, url)

        response = send(bob, url)

        assert replayed(response)
        assert response.content == first.content
        assert orders() == 1

    def test_custom_scope(self, serve: Callable[..., str], configure: Configure) -> None:
        url = serve(configure(create_order, scope_func=dotted("api_key_scope")))
        tenant_a, tenant_b = Client(), Client()

        send(tenant_a, url, headers={"X-Api-Key": "tenant-a"})
        other_tenant = send(tenant_b, url, headers={"X-Api-Key": "tenant-b"})
        same_tenant = send(tenant_b, url, headers={"X-Api-Key": "tenant-a"})

        assert not replayed(other_tenant)
        assert replayed(same_tenant)
        assert orders() == 2


@pytest.mark.django_db
class TestFingerprintFunc:
    def test_json_fingerprint_ignores_key_order_and_whitespace(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, fingerprint_func=json_fingerprint))
        first = send(client, url, '{"item": "latte", "quantity": 2}')

        retry = send(client, url, '{ "quantity" : 2,\n  "item":"latte" }')

        assert replayed(retry)
        assert retry.content == first.content
        assert orders() == 1

    def test_json_fingerprint_still_tells_values_apart(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, fingerprint_func=json_fingerprint))
        send(client, url, '{"item": "latte", "quantity": 2}')

        response = send(client, url, '{"item": "latte", "quantity": 3}')

        problem(response, 422, "idempotency_key_mismatch")

    def test_default_fingerprint_compares_bytes(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        url = serve(idempotent(create_order))
        send(client, url, '{"item": "latte", "quantity": 2}')

        response = send(client, url, '{"quantity": 2, "item": "latte"}')

        problem(response, 422, "idempotency_key_mismatch")

    def test_invalid_json_is_compared_as_bytes(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(
            configure(
                create_order, fingerprint_func="django_idempotency.fingerprint.json_fingerprint"
            )
        )

        first = send(client, url, '{"item": "latte",')
        retry = send(client, url, '{"item": "latte",')
        other = send(client, url, '{"item": "latte", ')

        assert first.status_code == 201
        assert replayed(retry)
        problem(other, 422, "idempotency_key_mismatch")

    def test_custom_fingerprint(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, fingerprint_func=dotted("constant_fingerprint")))
        send(client, url, {"item": "one"})

        response = send(client, url, {"item": "two"})

        assert replayed(response)
        assert orders() == 1


# -- time ------------------------------------------------------------------------------------


@pytest.mark.django_db
class TestTimes:
    @pytest.mark.parametrize("ttl", [3600, timedelta(hours=48), 86400.5])
    def test_ttl_sets_the_records_lifetime(
        self,
        client: Client,
        serve: Callable[..., str],
        configure: Configure,
        ttl: float | timedelta,
    ) -> None:
        url = serve(configure(create_order, ttl=ttl))

        send(client, url)

        row = IdempotencyKey.objects.get()
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        assert row.expires_at - row.created_at == timedelta(seconds=seconds)

    def test_after_ttl_the_view_runs_again(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, ttl=1, lock_timeout=0.5))
        send(client, url)
        assert replayed(send(client, url))

        time.sleep(1.2)

        assert not replayed(send(client, url))
        assert orders() == 2

    def test_lock_timeout_sets_the_claims_lease(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        leases: list[timedelta] = []

        def inspecting(request: HttpRequest) -> HttpResponse:
            row = IdempotencyKey.objects.get()
            leases.append(row.locked_until - row.created_at)
            return create_order(request)

        url = serve(configure(inspecting, lock_timeout=7))

        send(client, url)

        assert leases == [timedelta(seconds=7)]
        assert IdempotencyKey.objects.get().locked_until is None

    def test_lock_timeout_must_be_below_ttl(self) -> None:
        with pytest.raises(conf.OptionError, match="lock_timeout"):
            idempotent(ttl=10, lock_timeout=10)


@pytest.mark.django_db
class TestStoreIf:
    def test_only_what_store_if_accepts_is_stored(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(answering(201, 200), store_if=only_http_200))

        assert send(client, url).status_code == 201
        assert send(client, url).status_code == 200
        retry = send(client, url)

        assert replayed(retry)
        assert retry.status_code == 200
        assert orders() == 2

    def test_store_if_may_store_server_errors(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(answering(500), store_if=dotted("constant_true")))

        send(client, url)
        retry = send(client, url)

        assert retry.status_code == 500
        assert replayed(retry)
        assert orders() == 1


def constant_true(response: HttpResponseBase) -> bool:
    return True


# -- concurrent duplicates -------------------------------------------------------------------


@pytest.mark.django_db
class TestOnConflict:
    def test_default_is_409(self, client: Client, serve: Callable[..., str]) -> None:
        url = serve(idempotent(create_order))
        in_flight_claim(url)

        response = send(client, url)

        problem(response, 409, "idempotency_key_in_use")
        assert response["Retry-After"] == "1"
        assert orders() == 0

    def test_423(self, client: Client, serve: Callable[..., str], configure: Configure) -> None:
        url = serve(configure(create_order, on_conflict=423))
        in_flight_claim(url)

        response = send(client, url)

        document = problem(response, 423, "idempotency_key_in_use")
        assert document["title"] == "Locked"
        assert response["Retry-After"] == "1"
        assert orders() == 0

    def test_any_error_status_the_option_accepts(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        # on_conflict accepts any status from 400 to 599, such as a proxy's 499.
        url = serve(configure(create_order, on_conflict=499))
        in_flight_claim(url)

        response = send(client, url)

        problem(response, 499, "idempotency_key_in_use")
        assert orders() == 0

    def test_wait_replays_once_the_first_completes(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, on_conflict="wait", wait_timeout=5))
        request_key, token = in_flight_claim(url)
        stored = StoredResponse(
            status=201, headers=(("Content-Type", "application/json"),), body=b'{"id": 99}'
        )

        def first_finishes(sender: Any, **kwargs: Any) -> None:
            # The duplicate is now waiting: the first request completes.
            assert DatabaseStorage().complete(request_key, token, stored)

        signals.key_conflict.connect(first_finishes, weak=False)
        try:
            response = send(client, url)
        finally:
            signals.key_conflict.disconnect(first_finishes)

        assert response.status_code == 201
        assert response.content == b'{"id": 99}'
        assert replayed(response)
        assert orders() == 0

    def test_wait_timeout(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, on_conflict="wait", wait_timeout=0.3))
        in_flight_claim(url)

        started = time.monotonic()
        response = send(client, url)

        assert time.monotonic() - started >= 0.3
        problem(response, 409, "idempotency_key_in_use")
        assert orders() == 0


# -- what duplicates get ---------------------------------------------------------------------


@pytest.mark.django_db
class TestDuplicates:
    def test_replay_status(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, replay_status=409))
        first = send(client, url)

        retry = send(client, url)

        assert first.status_code == 201
        assert retry.status_code == 409
        assert retry.content == first.content
        assert retry["Content-Type"] == first["Content-Type"]
        assert retry["Location"] == first["Location"]
        assert replayed(retry)

    def test_replay_headers(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, replay_headers=["x-request-id"]))
        first = send(client, url)

        retry = send(client, url)

        assert first["X-Request-Id"].startswith("req-")
        assert retry["X-Request-Id"] == first["X-Request-Id"]
        assert replayed(retry)

    def test_without_replay_headers_request_id_is_not_replayed(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        url = serve(idempotent(create_order))
        assert "X-Request-Id" in send(client, url).headers

        retry = send(client, url)

        assert replayed(retry)
        assert "X-Request-Id" not in retry.headers

    def test_duplicate_response(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        originals: list[StoredResponse] = []

        def already_processed(request: HttpRequest, stored: StoredResponse) -> HttpResponse:
            originals.append(stored)
            return JsonResponse(
                {"code": 1003, "type": "DUPLICATE_TX_ID", "message": "Already transaction"},
                status=400,
            )

        url = serve(configure(create_order, duplicate_response=already_processed))
        first = send(client, url)

        retry = send(client, url)

        assert retry.status_code == 400
        assert retry.json() == {
            "code": 1003,
            "type": "DUPLICATE_TX_ID",
            "message": "Already transaction",
        }
        assert [stored.status for stored in originals] == [201]
        assert originals[0].body == first.content
        assert orders() == 1

    @pytest.mark.parametrize("limit", [0, 100])
    def test_max_body_size_exceeded(
        self, client: Client, serve: Callable[..., str], configure: Configure, limit: int
    ) -> None:
        def big(request: HttpRequest) -> HttpResponse:
            Order.objects.create(item="big")
            return HttpResponse(b"x" * 101, status=201)

        url = serve(configure(big, max_body_size=limit))
        first = send(client, url)

        retry = send(client, url)

        assert first.content == b"x" * 101
        document = problem(retry, 409, "idempotency_response_not_stored")
        assert document["original_status"] == 201
        assert orders() == 1

    def test_max_body_size_is_inclusive(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        def exact(request: HttpRequest) -> HttpResponse:
            Order.objects.create(item="exact")
            return HttpResponse(b"y" * 100, status=201)

        url = serve(configure(exact, max_body_size=100))
        send(client, url)

        retry = send(client, url)

        assert replayed(retry)
        assert retry.content == b"y" * 100


# -- the errors' format ----------------------------------------------------------------------

RENDERED: list[IdempotencyError] = []


def envelope(request: HttpRequest, error: IdempotencyError) -> HttpResponse:
    """A house error format: {"error": {"code", "status", "message"}}."""
    RENDERED.append(error)
    body: dict[str, Any] = {
        "code": error.code,
        "status": error.status,
        "message": error.detail,
        **error.extra,
    }
    response = JsonResponse({"error": body}, status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


@pytest.fixture
def rendered() -> Iterator[list[IdempotencyError]]:
    RENDERED.clear()
    yield RENDERED
    RENDERED.clear()


def check_envelope(
    response: HttpResponseBase,
    rendered: list[IdempotencyError],
    kind: type[IdempotencyError],
    status: int,
    code: str,
) -> None:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)["error"]
    assert body["code"] == code
    assert body["status"] == status
    assert body["message"]
    [error] = rendered
    assert isinstance(error, kind)
    assert (error.code, error.status) == (code, status)
    assert isinstance(error.detail, str)
    assert error.detail


@pytest.mark.django_db
class TestErrorResponse:
    def test_missing(
        self,
        client: Client,
        serve: Callable[..., str],
        configure: Configure,
        rendered: list[IdempotencyError],
    ) -> None:
        url = serve(configure(create_order, error_response=envelope, required=True))

        response = send(client, url, key=None)

        check_envelope(response, rendered, KeyMissing, 400, "idempotency_key_missing")

    def test_invalid(
        self,
        client: Client,
        serve: Callable[..., str],
        configure: Configure,
        rendered: list[IdempotencyError],
    ) -> None:
        url = serve(configure(create_order, error_response=dotted("envelope")))

        response = send(client, url, key="one, two")

        check_envelope(response, rendered, KeyInvalid, 400, "idempotency_key_invalid")

    def test_in_use(
        self,
        client: Client,
        serve: Callable[..., str],
        configure: Configure,
        rendered: list[IdempotencyError],
    ) -> None:
        url = serve(configure(create_order, error_response=envelope))
        in_flight_claim(url)

        response = send(client, url)

        check_envelope(response, rendered, KeyInUse, 409, "idempotency_key_in_use")
        assert response["Retry-After"] == "1"

    def test_mismatch(
        self,
        client: Client,
        serve: Callable[..., str],
        configure: Configure,
        rendered: list[IdempotencyError],
    ) -> None:
        url = serve(configure(create_order, error_response=envelope))
        send(client, url)

        response = send(client, url, {"item": "other"})

        check_envelope(response, rendered, KeyMismatch, 422, "idempotency_key_mismatch")

    def test_not_stored(
        self,
        client: Client,
        serve: Callable[..., str],
        configure: Configure,
        rendered: list[IdempotencyError],
    ) -> None:
        url = serve(configure(create_order, error_response=envelope, max_body_size=1))
        send(client, url)

        response = send(client, url)

        check_envelope(
            response, rendered, ResponseNotStored, 409, "idempotency_response_not_stored"
        )
        assert json.loads(response.content)["error"]["original_status"] == 201


def test_error_response_unavailable(
    client: Client,
    serve: Callable[..., str],
    configure: Configure,
    rendered: list[IdempotencyError],
    down_database: str,
) -> None:
    runs: list[int] = []
    url = serve(
        configure(
            counting(runs), error_response=envelope, storage=DatabaseStorage(database=down_database)
        )
    )

    response = send(client, url)

    check_envelope(response, rendered, StorageUnavailable, 503, "idempotency_storage_unavailable")
    assert response["Retry-After"] == "1"
    assert runs == []


# -- the store -------------------------------------------------------------------------------


def test_store_down_fails_closed(
    client: Client,
    serve: Callable[..., str],
    configure: Configure,
    down_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    url = serve(configure(counting(runs), storage=DatabaseStorage(database=down_database)))

    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        response = send(client, url)

    problem(response, 503, "idempotency_storage_unavailable")
    assert response["Retry-After"] == "1"
    assert runs == []
    assert [r.levelno for r in caplog.records if r.name == "django_idempotency"] == [logging.ERROR]


def test_store_down_fails_open_when_configured(
    client: Client,
    serve: Callable[..., str],
    configure: Configure,
    down_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    url = serve(
        configure(
            counting(runs),
            storage=DatabaseStorage(database=down_database),
            fail_open=True,
        )
    )

    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        first = send(client, url)
        second = send(client, url)

    assert first.status_code == second.status_code == 201
    assert not replayed(second)
    assert len(runs) == 2
    warnings = [r for r in caplog.records if r.name == "django_idempotency"]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.WARNING]
    assert all("unprotected" in r.getMessage() for r in warnings)


def test_store_options_setting_chooses_the_database(
    client: Client,
    serve: Callable[..., str],
    idempotency_settings: Callable[..., None],
    down_database: str,
) -> None:
    runs: list[int] = []
    url = serve(idempotent(counting(runs)))
    idempotency_settings(STORAGE_OPTIONS={"DATABASE": down_database})

    problem(send(client, url), 503, "idempotency_storage_unavailable")

    idempotency_settings(FAIL_OPEN=True)
    assert send(client, url).status_code == 201
    assert runs == [1]


@pytest.mark.django_db
class TestStorage:
    def test_storage_instance(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, storage=CountingStorage()))

        send(client, url)
        retry = send(client, url)

        assert replayed(retry)
        assert CountingStorage.claims == [KEY, KEY]
        assert orders() == 1

    def test_storage_dotted_path(
        self, client: Client, serve: Callable[..., str], configure: Configure
    ) -> None:
        url = serve(configure(create_order, storage=dotted("CountingStorage")))

        send(client, url)
        retry = send(client, url)

        assert replayed(retry)
        assert CountingStorage.claims == [KEY, KEY]

    def test_storage_options_are_given_to_the_configured_class(
        self, client: Client, serve: Callable[..., str], idempotency_settings: Callable[..., None]
    ) -> None:
        url = serve(idempotent(create_order))
        idempotency_settings(
            STORAGE=dotted("CountingStorage"), STORAGE_OPTIONS={"DATABASE": "default"}
        )

        send(client, url)

        assert CountingStorage.claims == [KEY]
        assert IdempotencyKey.objects.using("default").count() == 1


# -- settings read when used, and per-view values beating them --------------------------------


@pytest.mark.django_db
class TestSettingsReadWhenUsed:
    def test_override_settings_after_requests_takes_effect(
        self, client: Client, serve: Callable[..., str], per_view: Configure
    ) -> None:
        url = serve(per_view(create_order))
        send(client, url, key="before")
        assert replayed(send(client, url, key="before"))

        with override_settings(IDEMPOTENCY={"HEADER": "X-Request-Key", "REPLAY_STATUS": 200}):
            send(client, url, key="during", key_header="X-Request-Key")
            during = send(client, url, key="during", key_header="X-Request-Key")
            ignored = send(client, url, key="before")

        after = send(client, url, key="before")

        assert during.status_code == 200
        assert replayed(during)
        assert not replayed(ignored)
        assert after.status_code == 201
        assert replayed(after)


@pytest.mark.django_db
class TestViewOptionBeatsSetting:
    def test_header(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, header="X-View-Key"))
        idempotency_settings(HEADER="X-Global-Key")

        send(client, url, key="a", key_header="X-View-Key")
        by_view_header = send(client, url, key="a", key_header="X-View-Key")
        send(client, url, key="b", key_header="X-Global-Key")
        by_global_header = send(client, url, key="b", key_header="X-Global-Key")

        assert replayed(by_view_header)
        assert not replayed(by_global_header)
        assert orders() == 3

    def test_replay_status(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, replay_status=200))
        idempotency_settings(REPLAY_STATUS=409)
        send(client, url)

        assert send(client, url).status_code == 200

    def test_methods(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, methods=["POST"]))
        idempotency_settings(METHODS=["PUT"])

        send(client, url, method="put")
        put_again = send(client, url, method="put")
        send(client, url)
        post_again = send(client, url)

        assert not replayed(put_again)
        assert replayed(post_again)

    def test_required(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, required=False))
        idempotency_settings(REQUIRED=True)

        assert send(client, url, key=None).status_code == 201

    def test_ttl(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, ttl=3600))
        idempotency_settings(TTL=7200)

        send(client, url)

        row = IdempotencyKey.objects.get()
        assert row.expires_at - row.created_at == timedelta(hours=1)

    def test_on_conflict(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, on_conflict=409))
        idempotency_settings(ON_CONFLICT=423)
        in_flight_claim(url)

        problem(send(client, url), 409, "idempotency_key_in_use")

    def test_key_pattern(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, key_pattern=r"v-[0-9]+"))
        idempotency_settings(KEY_PATTERN=r"g-[0-9]+")

        assert send(client, url, key="v-1").status_code == 201
        problem(send(client, url, key="g-1"), 400, "idempotency_key_invalid")

    def test_settings_fill_in_what_the_view_leaves_out(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, ttl=3600))
        idempotency_settings(REPLAY_STATUS=409, REPLAY_HEADERS=["X-Request-Id"])
        first = send(client, url)

        retry = send(client, url)

        assert retry.status_code == 409
        assert retry["X-Request-Id"] == first["X-Request-Id"]
        row = IdempotencyKey.objects.get()
        assert row.expires_at - row.created_at == timedelta(hours=1)


@pytest.mark.django_db
class TestMixinPerRequestOptions:
    """``get_idempotency_options()`` wins over the ``idempotency_*``
    attributes, and ``UNSET`` from either leaves the option to the setting."""

    @pytest.fixture
    def endpoint(self) -> type[Any]:
        """An APIView with the mixin whose ``idempotency_replay_status`` is 409."""
        pytest.importorskip("rest_framework")
        view: Any = drf_protected(create_order, {"replay_status": 409})
        endpoint: type[Any] = view.cls
        return endpoint

    def test_per_request_options_beat_the_attribute(
        self,
        client: Client,
        serve: Callable[..., str],
        idempotency_settings: Callable[..., None],
        endpoint: type[Any],
    ) -> None:
        def get_idempotency_options(view: Any) -> dict[str, Any]:
            # Decided per request: the request is the view's by now.
            legacy = view.request.headers.get("X-Client") == "legacy"
            return {"replay_status": 200 if legacy else 202}

        decided = type("Decided", (endpoint,), {"get_idempotency_options": get_idempotency_options})
        url = serve(decided.as_view())
        idempotency_settings(REPLAY_STATUS=203)
        send(client, url)

        legacy = send(client, url, headers={"X-Client": "legacy"})
        other = send(client, url)

        assert (legacy.status_code, other.status_code) == (200, 202)
        assert replayed(legacy)
        assert replayed(other)

    @pytest.mark.parametrize("where", ["attribute", "per-request"])
    def test_unset_leaves_the_option_to_the_setting(
        self,
        client: Client,
        serve: Callable[..., str],
        idempotency_settings: Callable[..., None],
        endpoint: type[Any],
        where: str,
    ) -> None:
        from django_idempotency.rest_framework import UNSET

        if where == "attribute":
            deferring = type("Deferring", (endpoint,), {"idempotency_replay_status": UNSET})
        else:
            deferring = type(
                "Deferring",
                (endpoint,),
                {"get_idempotency_options": lambda view: {"replay_status": UNSET}},
            )
        url = serve(deferring.as_view())
        idempotency_settings(REPLAY_STATUS=203)
        send(client, url)

        retry = send(client, url)

        assert retry.status_code == 203
        assert replayed(retry)


# -- validation at decoration time -----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("ttl", 0),
        ("ttl", -5),
        ("ttl", "3600"),
        ("ttl", True),
        ("lock_timeout", 0),
        ("max_lock_time", 0),
        ("max_lock_time", "300"),
        ("completion_timeout", -1),
        ("completion_timeout", None),
        ("wait_timeout", -1),
        ("wait_timeout", None),
        ("header", "Idempotency Key"),
        ("header", "Idempotency_Key"),
        ("header", ""),
        ("header", 42),
        ("key_pattern", "("),
        ("key_pattern", 42),
        ("key_func", "no_such_module.key"),
        ("key_func", 42),
        ("scope_func", "django_idempotency.scope.no_such_scope"),
        ("fingerprint_func", 3.5),
        ("store_if", "not a dotted path"),
        ("duplicate_response", 1),
        ("error_response", "django_idempotency.nothing_here"),
        ("methods", "POST"),
        ("methods", [1]),
        ("methods", [""]),
        ("methods", None),
        ("required", 1),
        ("required", "yes"),
        ("fail_open", None),
        ("atomic", "yes"),
        ("atomic", 1),
        ("on_conflict", 200),
        ("on_conflict", 600),
        ("on_conflict", "later"),
        ("on_conflict", True),
        ("replay_status", 99),
        ("replay_status", "200"),
        ("replay_headers", "X-Request-Id"),
        ("replay_headers", [None]),
        ("max_body_size", -1),
        ("max_body_size", 1.5),
        ("storage", 42),
        ("storage", "os.path.join"),
        ("storage", "no_such_module.Storage"),
    ],
)
def test_bad_option_value_raises_at_decoration(option: str, value: Any) -> None:
    with pytest.raises(conf.OptionError, match=option):
        idempotent(**{option: value})


@pytest.mark.parametrize("name", ["tll", "timeout", "storage_options", "STORAGE"])
def test_unknown_keyword_raises_type_error(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        idempotent(**{name: 1})


def test_positional_non_view_raises_type_error() -> None:
    with pytest.raises(TypeError, match="idempotent"):
        idempotent("x")  # type: ignore[call-overload]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "decorate",
    [idempotent, idempotent(), idempotent(ttl=3600)],
    ids=["@idempotent", "@idempotent()", "@idempotent(ttl=3600)"],
)
def test_decorator_forms(
    client: Client, serve: Callable[..., str], decorate: Callable[..., Any]
) -> None:
    def place_order(request: HttpRequest) -> HttpResponse:
        return create_order(request)

    view = decorate(place_order)
    url = serve(view)

    send(client, url)

    assert view.__name__ == "place_order"
    assert replayed(send(client, url))
    assert orders() == 1


# -- the lease when LOCK_TIMEOUT is set nowhere ------------------------------------------------


def leases_seen(seen: list[timedelta]) -> Callable[[HttpRequest], HttpResponse]:
    """``create_order``, recording the lease of the claim it runs under."""

    def inspecting(request: HttpRequest) -> HttpResponse:
        row = IdempotencyKey.objects.get()
        seen.append(row.locked_until - row.created_at)
        return create_order(request)

    return inspecting


@pytest.mark.django_db
class TestDerivedLockTimeout:
    @pytest.mark.parametrize(
        ("ttl", "lease"),
        [(5, 2.5), (timedelta(seconds=1), 0.5), (59, 29.5), (60, 30), (3600, 30)],
    )
    def test_a_ttl_alone_gets_a_lease_that_fits_it(
        self,
        client: Client,
        serve: Callable[..., str],
        configure: Configure,
        ttl: float | timedelta,
        lease: float,
    ) -> None:
        seen: list[timedelta] = []
        url = serve(configure(leases_seen(seen), ttl=ttl))

        assert send(client, url).status_code == 201
        assert replayed(send(client, url))

        assert seen == [timedelta(seconds=lease)]
        assert orders() == 1

    def test_the_default_ttl_keeps_the_30_second_lease(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        seen: list[timedelta] = []
        url = serve(idempotent(leases_seen(seen)))

        send(client, url)

        assert seen == [timedelta(seconds=30)]

    def test_a_lock_timeout_in_the_setting_is_used_as_set(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        idempotency_settings(LOCK_TIMEOUT=4)
        seen: list[timedelta] = []
        url = serve(per_view(leases_seen(seen), ttl=5))

        send(client, url)

        assert seen == [timedelta(seconds=4)]

    def test_lock_timeout_none_on_the_view_derives_it_despite_the_setting(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        idempotency_settings(LOCK_TIMEOUT=30)
        seen: list[timedelta] = []
        url = serve(per_view(leases_seen(seen), ttl=5, lock_timeout=None))

        send(client, url)

        assert seen == [timedelta(seconds=2.5)]


@pytest.mark.django_db(transaction=True)
def test_a_slow_view_keeps_its_key_past_the_derived_lease(
    client: Client, serve: Callable[..., str], gate: Any, store: Any
) -> None:
    """The derived lease (4 s for a ttl of 8 s) is renewed while the view
    runs, in each store: a duplicate after it is still answered 409, not run
    again. (Seconds of margin: the renewals and the replay must not be late
    on a loaded machine.)"""
    from helpers import InBackground

    url = serve(idempotent(gate(create_order), ttl=8, storage=store))
    first = InBackground(lambda c: send(c, url))
    assert gate.entered.wait(10)

    time.sleep(4.5)
    duplicate = send(client, url)
    gate.release.set()

    problem(duplicate, 409, "idempotency_key_in_use")
    assert first.result().status_code == 201
    assert replayed(send(client, url))
    assert orders() == 1


# -- a lock_timeout set explicitly that does not fit the ttl ---------------------------------


def refusal(client: Client, serve: Callable[..., str], make: Callable[[], Any]) -> str:
    """The ``OptionError`` a misfit raises: when the view is made (decorator,
    mixin attributes) or when a request comes (``get_idempotency_options()``)."""
    with pytest.raises(conf.OptionError) as raised:
        send(client, serve(make()))
    return str(raised.value)


VIEW_LABEL = (
    r"(idempotent\({0}=\.\.\.\)|Endpoint\.idempotency_{0}"
    r"|Endpoints\.get_idempotency_options\(\)\['{0}'\])"
)


def view_option(name: str) -> str:
    """The pattern of option ``name`` as each adapter spells it."""
    return VIEW_LABEL.format(name)


@pytest.mark.django_db
class TestLockTimeoutMisfit:
    def test_ttl_on_the_view_and_lock_timeout_in_the_setting(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        idempotency_settings(LOCK_TIMEOUT=30)

        message = refusal(client, serve, lambda: per_view(create_order, ttl=5))

        assert re.match(
            r"IDEMPOTENCY\['LOCK_TIMEOUT'\] \(30 s, set in the setting\) must be below "
            + view_option("ttl")
            + r" \(5 s, set on the view\): a claim cannot outlive the record it claims\. "
            + "Set "
            + view_option("lock_timeout")
            + r" too, below 5 s \(for example to 2\.5\), or remove LOCK_TIMEOUT from the "
            r"IDEMPOTENCY setting to have the lease of each view derived from ttl",
            message,
        ), message
        assert orders() == 0

    def test_lock_timeout_on_the_view_and_ttl_in_the_setting(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        idempotency_settings(TTL=60)

        message = refusal(client, serve, lambda: per_view(create_order, lock_timeout=90))

        assert re.match(
            view_option("lock_timeout")
            + r" \(90 s, set on the view\) must be below IDEMPOTENCY\['TTL'\] \(60 s, set in "
            r"the setting\).*Set "
            + view_option("lock_timeout")
            + r" below 60 s \(for example to 30\), or remove it to have it derived from ttl",
            message,
        ), message

    def test_both_on_the_view(self, client: Client, serve: Callable[..., str]) -> None:
        message = refusal(client, serve, lambda: idempotent(create_order, ttl=10, lock_timeout=10))

        assert message.startswith(
            "idempotent(lock_timeout=...) (10 s, set on the view) must be below "
            "idempotent(ttl=...) (10 s, set on the view)"
        )
        assert "below 10 s (for example to 5), or remove it" in message

    def test_unsetting_it_on_the_view_is_said_to_be_none_when_the_setting_has_one(
        self,
        client: Client,
        serve: Callable[..., str],
        idempotency_settings: Callable[..., None],
    ) -> None:
        idempotency_settings(LOCK_TIMEOUT=3)

        message = refusal(client, serve, lambda: idempotent(create_order, ttl=10, lock_timeout=10))

        assert "or set it to None to have it derived from ttl" in message

    def test_against_the_default_ttl(self, client: Client, serve: Callable[..., str]) -> None:
        message = refusal(client, serve, lambda: idempotent(create_order, lock_timeout=100_000))

        assert "must be below TTL (86400 s, the default)" in message

    def test_a_setting_changed_after_decoration_is_refused_at_the_request(
        self,
        client: Client,
        serve: Callable[..., str],
        per_view: Configure,
        idempotency_settings: Callable[..., None],
    ) -> None:
        url = serve(per_view(create_order, ttl=5))
        assert send(client, url).status_code == 201

        idempotency_settings(LOCK_TIMEOUT=30)
        with pytest.raises(conf.OptionError, match=r"LOCK_TIMEOUT'\] \(30 s, set in the setting"):
            send(client, url, key="another")

        assert orders() == 1
