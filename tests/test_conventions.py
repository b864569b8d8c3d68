"""The idempotency conventions of real integrations, each built from public
options only: one class per column of the conventions table (the default,
BetLink wallet, GPAS wallet in both modes, XCover, TXCloud)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import helpers
import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client
from factories import UserFactory
from helpers import (
    UUID_PATTERN,
    external_reference,
    in_flight_claim,
    only_http_200,
    order_data,
    orders,
    problem,
    replayed,
)

from demo.models import Order
from django_idempotency import scope
from django_idempotency.decorators import idempotent
from django_idempotency.errors import IdempotencyError, KeyMismatch, problem_response
from django_idempotency.models import IdempotencyKey, State
from django_idempotency.responses import StoredResponse

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response


def operation(name: str, status: int = 200) -> Callable[..., HttpResponse]:
    """A wallet or booking endpoint: records an order per run."""

    def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        data = order_data(request)
        order = Order.objects.create(item=f"{name}:{data.get('amount', 0)}")
        response = JsonResponse(
            {"operation": name, "id": order.pk, "balance": 100 - order.pk}, status=status
        )
        response["X-Request-Id"] = f"req-{uuid.uuid4().hex[:12]}"
        response["Location"] = f"/{name}/{order.pk}/"
        return response

    return view


def send(client: Client, url: str, data: Any, **options: Any) -> Response:
    """Send ``data`` with no key header but the ones in ``headers``: each
    convention names its own."""
    return helpers.send(client, url, data, None, **options)


def retention() -> timedelta:
    row = IdempotencyKey.objects.get()
    return row.expires_at - row.created_at  # type: ignore[no-any-return]


# -- the default: IETF draft-07 and Stripe ---------------------------------------------------


@pytest.mark.django_db
class TestDefaultConvention:
    BODY: ClassVar[dict[str, Any]] = {"amount": 2500, "currency": "eur"}

    @pytest.fixture
    def url(self, serve: Callable[..., str]) -> str:
        return serve(idempotent(operation("charges", status=201)), "v1/charges/")

    def test_key_in_idempotency_key_header_quoted_or_bare(self, client: Client, url: str) -> None:
        first = send(client, url, self.BODY, headers={"Idempotency-Key": '"8e03978e-40d5"'})

        retry = send(client, url, self.BODY, headers={"Idempotency-Key": "8e03978e-40d5"})

        assert first.status_code == 201
        assert replayed(retry)
        assert orders() == 1

    def test_key_is_1_to_255_printable_ascii(self, client: Client, url: str) -> None:
        for bad in ("", "k" * 256, "caf\u00e9", "tab\there"):
            problem(
                send(client, url, self.BODY, headers={"Idempotency-Key": bad}),
                400,
                ("idempotency_key_invalid"),
            )
        for good in ("k" * 255, "~ !", "a"):
            response = send(client, url, self.BODY, headers={"Idempotency-Key": good})
            assert response.status_code == 201
        assert orders() == 3

    def test_scope_is_the_principal_and_the_endpoint(
        self, serve: Callable[..., str], url: str
    ) -> None:
        refunds = serve(idempotent(operation("refunds", status=201)), "v1/refunds/")
        alice, bob = Client(), Client()
        alice.force_login(UserFactory())
        bob.force_login(UserFactory())
        headers = {"Idempotency-Key": "shared"}

        send(alice, url, self.BODY, headers=headers)
        other_user = send(bob, url, self.BODY, headers=headers)
        other_endpoint = send(alice, refunds, self.BODY, headers=headers)

        assert not replayed(other_user)
        assert not replayed(other_endpoint)
        assert orders() == 3

    def test_finished_duplicate_replays_status_body_and_safe_headers(
        self, client: Client, url: str
    ) -> None:
        headers = {"Idempotency-Key": "ch-1"}
        first = send(client, url, self.BODY, headers=headers)

        retry = send(client, url, self.BODY, headers=headers)

        assert retry.status_code == first.status_code == 201
        assert retry.content == first.content
        assert retry["Location"] == first["Location"]
        assert retry["Content-Type"] == first["Content-Type"]
        assert retry["Idempotent-Replayed"] == "true"
        assert "X-Request-Id" not in retry.headers

    def test_running_duplicate_gets_409_and_nothing_is_stored(
        self, client: Client, url: str
    ) -> None:
        in_flight_claim(url, self.BODY, "ch-2")

        response = send(client, url, self.BODY, headers={"Idempotency-Key": "ch-2"})

        problem(response, 409, "idempotency_key_in_use")
        assert response["Retry-After"]
        row = IdempotencyKey.objects.get()
        assert row.state == State.IN_PROGRESS
        assert row.response_status is None
        assert orders() == 0

    def test_other_request_gets_422(self, client: Client, url: str) -> None:
        send(client, url, self.BODY, headers={"Idempotency-Key": "ch-3"})

        response = send(client, url, {"amount": 1}, headers={"Idempotency-Key": "ch-3"})

        problem(response, 422, "idempotency_key_mismatch")
        assert orders() == 1

    @pytest.mark.parametrize(("status", "stored"), [(200, True), (402, True), (500, False)])
    def test_2xx_to_4xx_mark_the_key_done_5xx_does_not(
        self, client: Client, serve: Callable[..., str], status: int, stored: bool
    ) -> None:
        url = serve(idempotent(operation("charges", status=status)))
        headers = {"Idempotency-Key": f"ch-{status}"}

        send(client, url, self.BODY, headers=headers)
        retry = send(client, url, self.BODY, headers=headers)

        assert replayed(retry) is stored
        assert orders() == (1 if stored else 2)

    def test_exception_releases_the_key(self, client: Client, serve: Callable[..., str]) -> None:
        runs: list[int] = []

        def crashing(request: HttpRequest) -> HttpResponse:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("card network down")
            return operation("charges", status=201)(request)

        url = serve(idempotent(crashing))
        headers = {"Idempotency-Key": "ch-4"}

        with pytest.raises(RuntimeError, match="card network down"):
            send(client, url, self.BODY, headers=headers)
        retry = send(client, url, self.BODY, headers=headers)

        assert retry.status_code == 201
        assert not replayed(retry)

    def test_retention_is_24_hours(self, client: Client, url: str) -> None:
        send(client, url, self.BODY, headers={"Idempotency-Key": "ch-5"})

        assert retention() == timedelta(hours=24)

    @pytest.mark.parametrize(
        ("method", "protected"),
        [("get", False), ("post", True), ("put", True), ("patch", True), ("delete", True)],
    )
    def test_unsafe_methods_are_protected(
        self, client: Client, url: str, method: str, protected: bool
    ) -> None:
        headers = {"Idempotency-Key": "ch-6"}

        send(client, url, self.BODY, headers=headers, method=method)
        retry = send(client, url, self.BODY, headers=headers, method=method)

        assert replayed(retry) is protected

    def test_required_key_missing_gets_400(self, client: Client, serve: Callable[..., str]) -> None:
        url = serve(idempotent(required=True)(operation("charges")))

        problem(send(client, url, self.BODY), 400, "idempotency_key_missing")
        assert orders() == 0


# -- BetLink wallet --------------------------------------------------------------------------


@pytest.mark.django_db
class TestBetLinkWallet:
    OPTIONS: ClassVar[dict[str, Any]] = {
        "header": "X-Idempotency-Key",
        "key_pattern": UUID_PATTERN,
        "scope_func": scope.principal_scope,
        "store_if": only_http_200,
    }
    BET: ClassVar[dict[str, Any]] = {"roundId": "r-1", "amount": 5}

    @pytest.fixture
    def operator(self) -> Client:
        client = Client()
        client.force_login(UserFactory())
        return client

    @pytest.fixture
    def urls(self, serve: Callable[..., str]) -> dict[str, str]:
        return {
            name: serve(idempotent(**self.OPTIONS)(operation(name)), f"wallet/{name}/")
            for name in ("bet", "void", "settle")
        }

    @staticmethod
    def key(value: str | None = None) -> dict[str, str]:
        return {"X-Idempotency-Key": value or str(uuid.uuid4())}

    @pytest.mark.parametrize("endpoint", ["bet", "void", "settle"])
    def test_retry_replays_the_identical_response(
        self, operator: Client, urls: dict[str, str], endpoint: str
    ) -> None:
        headers = self.key()
        first = send(operator, urls[endpoint], self.BET, headers=headers)

        retry = send(operator, urls[endpoint], self.BET, headers=headers)

        assert first.status_code == 200
        assert retry.status_code == 200
        assert retry.content == first.content
        assert retry["Content-Type"] == first["Content-Type"]
        assert retry["Location"] == first["Location"]
        assert orders() == 1

    @pytest.mark.parametrize("bad", ["bet-1", "8E03978E-40D5-43E8-BC93-6894A57F9324", "1" * 36])
    def test_key_is_a_uuid_in_x_idempotency_key(
        self, operator: Client, urls: dict[str, str], bad: str
    ) -> None:
        problem(
            send(operator, urls["bet"], self.BET, headers=self.key(bad)),
            400,
            ("idempotency_key_invalid"),
        )
        unprotected = send(operator, urls["bet"], self.BET, headers={"Idempotency-Key": bad})
        assert unprotected.status_code == 200
        assert orders() == 1

    def test_scope_is_the_operator(self, operator: Client, urls: dict[str, str]) -> None:
        other_operator = Client()
        other_operator.force_login(UserFactory())
        headers = self.key()

        send(operator, urls["bet"], self.BET, headers=headers)
        from_other_operator = send(other_operator, urls["bet"], self.BET, headers=headers)
        on_other_endpoint = send(operator, urls["settle"], self.BET, headers=headers)

        assert from_other_operator.status_code == 200
        assert not replayed(from_other_operator)
        # One operator's key is theirs across the bet, void and settle endpoints.
        problem(on_other_endpoint, 422, "idempotency_key_mismatch")
        assert orders() == 2

    @pytest.mark.parametrize("status", [201, 202, 402, 409, 500, 503])
    def test_only_http_200_marks_the_key_done(
        self, operator: Client, serve: Callable[..., str], status: int
    ) -> None:
        statuses = [status, 200]

        def wallet(request: HttpRequest) -> HttpResponse:
            return operation("bet", status=statuses.pop(0) if statuses else 200)(request)

        url = serve(idempotent(**self.OPTIONS)(wallet))
        headers = self.key()

        assert send(operator, url, self.BET, headers=headers).status_code == status
        second = send(operator, url, self.BET, headers=headers)
        third = send(operator, url, self.BET, headers=headers)

        assert second.status_code == 200
        assert not replayed(second)
        assert replayed(third)
        assert third.content == second.content
        assert orders() == 2

    def test_exception_never_counts(self, operator: Client, serve: Callable[..., str]) -> None:
        runs: list[int] = []

        def wallet(request: HttpRequest) -> HttpResponse:
            runs.append(1)
            if len(runs) == 1:
                raise ConnectionResetError("ledger connection reset")
            return operation("bet")(request)

        url = serve(idempotent(**self.OPTIONS)(wallet))
        headers = self.key()

        with pytest.raises(ConnectionResetError):
            send(operator, url, self.BET, headers=headers)
        assert send(operator, url, self.BET, headers=headers).status_code == 200
        assert replayed(send(operator, url, self.BET, headers=headers))
        assert len(runs) == 2


# -- GPAS wallet -----------------------------------------------------------------------------


def already_transaction(request: HttpRequest, stored: StoredResponse) -> HttpResponse:
    return JsonResponse(
        {"code": 1003, "type": "DUPLICATE_TX_ID", "message": "Already transaction"}, status=400
    )


GPAS_OPTIONS: dict[str, Any] = {
    "key_func": external_reference,
    "scope_func": scope.global_scope,
}


@pytest.mark.django_db
class TestGpasWallet:
    @pytest.fixture(params=["error", "replay"])
    def mode(self, request: pytest.FixtureRequest) -> str:
        mode: str = request.param
        return mode

    @pytest.fixture
    def urls(self, serve: Callable[..., str], mode: str) -> dict[str, str]:
        options = dict(GPAS_OPTIONS)
        if mode == "error":
            options["duplicate_response"] = already_transaction
        return {
            name: serve(idempotent(**options)(operation(name)), f"gpas/{name}/")
            for name in ("bet", "win", "reversal")
        }

    @pytest.mark.parametrize("endpoint", ["bet", "win", "reversal"])
    @pytest.mark.parametrize("reference", ["TX-2024-000017", 7_000_123])
    def test_duplicate_transaction(
        self,
        client: Client,
        urls: dict[str, str],
        mode: str,
        endpoint: str,
        reference: object,
    ) -> None:
        body = {"externalReference": reference, "amount": 12}
        first = send(client, urls[endpoint], body)

        duplicate = send(client, urls[endpoint], body)

        assert first.status_code == 200
        if mode == "error":
            assert duplicate.status_code == 400
            assert duplicate.json() == {
                "code": 1003,
                "type": "DUPLICATE_TX_ID",
                "message": "Already transaction",
            }
        else:
            assert duplicate.status_code == 200
            assert duplicate.content == first.content
            assert replayed(duplicate)
        assert orders() == 1
        assert IdempotencyKey.objects.get().key == str(reference)

    def test_key_is_the_transaction_id_not_a_header(
        self, client: Client, urls: dict[str, str]
    ) -> None:
        send(client, urls["bet"], {"externalReference": "TX-1"}, headers={"Idempotency-Key": "a"})
        send(client, urls["bet"], {"externalReference": "TX-2"}, headers={"Idempotency-Key": "a"})
        no_reference = {"amount": 3}
        send(client, urls["bet"], no_reference, headers={"Idempotency-Key": "b"})
        send(client, urls["bet"], no_reference, headers={"Idempotency-Key": "b"})

        assert orders() == 4

    def test_scope_is_the_transaction(self, urls: dict[str, str]) -> None:
        first_caller, second_caller = Client(), Client()
        second_caller.force_login(UserFactory())
        body = {"externalReference": "TX-3", "amount": 1}

        send(first_caller, urls["win"], body)
        send(second_caller, urls["win"], body)

        assert orders() == 1


# -- XCover ----------------------------------------------------------------------------------


@pytest.mark.django_db
class TestXCover:
    OPTIONS: ClassVar[dict[str, Any]] = {
        "header": "x-idempotency-key",
        "scope_func": scope.principal_scope,
        "replay_status": 409,
        "on_conflict": 423,
        "ttl": timedelta(hours=48),
    }
    BOOKING: ClassVar[dict[str, Any]] = {"quote": "q-1", "policy_start": "2024-05-01"}

    @pytest.fixture
    def partner(self) -> Client:
        client = Client()
        client.force_login(UserFactory())
        return client

    @pytest.fixture
    def url(self, serve: Callable[..., str]) -> str:
        return serve(idempotent(**self.OPTIONS)(operation("bookings", status=201)), "bookings/")

    def test_key_in_lowercase_header_any_format(self, partner: Client, url: str) -> None:
        headers = {"x-idempotency-key": "partner booking #17 / retry-safe"}
        first = send(partner, url, self.BOOKING, headers=headers)

        retry = send(partner, url, self.BOOKING, headers=headers)

        assert first.status_code == 201
        assert replayed(retry)

    def test_duplicate_replays_the_stored_body_with_409(self, partner: Client, url: str) -> None:
        headers = {"x-idempotency-key": "bk-1"}
        first = send(partner, url, self.BOOKING, headers=headers)

        retry = send(partner, url, self.BOOKING, headers=headers)

        assert retry.status_code == 409
        assert retry.content == first.content
        assert retry["Content-Type"] == "application/json"
        assert orders() == 1

    def test_running_duplicate_gets_423(self, client: Client, url: str) -> None:
        in_flight_claim(url, self.BOOKING, "bk-2", scope=scope.ANONYMOUS)

        response = send(client, url, self.BOOKING, headers={"x-idempotency-key": "bk-2"})

        problem(response, 423, "idempotency_key_in_use")
        assert orders() == 0

    def test_scope_is_the_partner(
        self, partner: Client, url: str, serve: Callable[..., str]
    ) -> None:
        amend = serve(idempotent(**self.OPTIONS)(operation("amend")), "bookings/amend/")
        other_partner = Client()
        other_partner.force_login(UserFactory())
        headers = {"x-idempotency-key": "bk-3"}

        send(partner, url, self.BOOKING, headers=headers)
        from_other_partner = send(other_partner, url, self.BOOKING, headers=headers)
        on_other_booking_endpoint = send(partner, amend, self.BOOKING, headers=headers)

        assert from_other_partner.status_code == 201
        problem(on_other_booking_endpoint, 422, "idempotency_key_mismatch")
        assert orders() == 2

    def test_retention_is_48_hours(self, partner: Client, url: str) -> None:
        send(partner, url, self.BOOKING, headers={"x-idempotency-key": "bk-4"})

        assert retention() == timedelta(hours=48)


# -- TXCloud ---------------------------------------------------------------------------------


def api_key_and_endpoint(request: HttpRequest) -> str:
    return f"{request.headers.get('Authorization', '')}|{scope.endpoint(request)}"


def txcloud_errors(request: HttpRequest, error: IdempotencyError) -> HttpResponse:
    """TXCloud's problem documents, with its own code for a reused key."""
    response = problem_response(request, error)
    if isinstance(error, KeyMismatch):
        document = json.loads(response.content)
        document["code"] = "idempotency_key_conflict"
        response.content = json.dumps(document).encode()
    return response


@pytest.mark.django_db
class TestTxCloud:
    OPTIONS: ClassVar[dict[str, Any]] = {
        "key_pattern": r"[A-Za-z0-9_-]{10,255}",
        "scope_func": api_key_and_endpoint,
        "replay_headers": ["X-Request-Id"],
        "error_response": txcloud_errors,
        "ttl": 24 * 60 * 60,
        "methods": ["POST"],
    }
    TRANSFER: ClassVar[dict[str, Any]] = {"to": "acct_9", "amount": 40}

    @pytest.fixture
    def url(self, serve: Callable[..., str]) -> str:
        return serve(idempotent(**self.OPTIONS)(operation("transfers", status=201)), "transfers/")

    @staticmethod
    def headers(key: str, api_key: str = "Bearer tk_live_a") -> dict[str, str]:
        return {"Idempotency-Key": key, "Authorization": api_key}

    @pytest.mark.parametrize(
        ("key", "valid"),
        [("transfer_0001", True), ("A-b_C-d_E-f", True), ("short", False), ("has space1", False)],
    )
    def test_key_format(self, client: Client, url: str, key: str, valid: bool) -> None:
        response = send(client, url, self.TRANSFER, headers=self.headers(key))

        if valid:
            assert response.status_code == 201
        else:
            problem(response, 400, "idempotency_key_invalid")

    def test_replay_carries_the_original_request_id(self, client: Client, url: str) -> None:
        first = send(client, url, self.TRANSFER, headers=self.headers("transfer_0002"))

        retry = send(client, url, self.TRANSFER, headers=self.headers("transfer_0002"))

        assert retry["Idempotent-Replayed"] == "true"
        assert retry["X-Request-Id"] == first["X-Request-Id"]
        assert retry.content == first.content
        assert orders() == 1

    def test_scope_is_the_api_key_and_the_endpoint(
        self, client: Client, url: str, serve: Callable[..., str]
    ) -> None:
        payouts = serve(idempotent(**self.OPTIONS)(operation("payouts", status=201)), "payouts/")
        key = "transfer_0003"

        send(client, url, self.TRANSFER, headers=self.headers(key))
        other_api_key = send(client, url, self.TRANSFER, headers=self.headers(key, "Bearer tk_b"))
        other_endpoint = send(client, payouts, self.TRANSFER, headers=self.headers(key))
        same_again = send(client, url, self.TRANSFER, headers=self.headers(key))

        assert not replayed(other_api_key)
        assert not replayed(other_endpoint)
        assert replayed(same_again)
        assert orders() == 3

    def test_reused_key_gets_idempotency_key_conflict(self, client: Client, url: str) -> None:
        send(client, url, self.TRANSFER, headers=self.headers("transfer_0004"))

        response = send(client, url, {"to": "acct_1"}, headers=self.headers("transfer_0004"))

        problem(response, 422, "idempotency_key_conflict")
        assert orders() == 1

    def test_other_errors_keep_their_codes(self, client: Client, url: str) -> None:
        problem(
            send(client, url, self.TRANSFER, headers=self.headers("bad")),
            400,
            "idempotency_key_invalid",
        )

    def test_retention_is_24_hours(self, client: Client, url: str) -> None:
        send(client, url, self.TRANSFER, headers=self.headers("transfer_0005"))

        assert retention() == timedelta(hours=24)

    @pytest.mark.parametrize("method", ["get", "delete"])
    def test_get_and_delete_are_exempt(self, client: Client, url: str, method: str) -> None:
        headers = self.headers("transfer_0006")

        send(client, url, self.TRANSFER, headers=headers, method=method)
        again = send(client, url, self.TRANSFER, headers=headers, method=method)

        assert not replayed(again)
        assert orders() == 2
        assert not IdempotencyKey.objects.exists()
