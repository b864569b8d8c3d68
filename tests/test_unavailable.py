"""The store being down: at claim time (fail closed, or open when asked), and
at completion or release time, when the view has already run.

The store that is down is a real database that cannot be reached
(``down_database``); nothing here is a mock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client
from helpers import KEY, acounting, asend, counting, send

from django_idempotency.decorators import idempotent
from django_idempotency.errors import PROBLEM_CONTENT_TYPE
from django_idempotency.responses import StoredResponse
from django_idempotency.storage import DatabaseStorage, RequestKey

ROUTE = "endpoint/"
LOGGER = "django_idempotency"


def _log_id() -> str:
    """What the logs show instead of KEY for an anonymous request to ROUTE."""
    return RequestKey(scope=f"anonymous|{ROUTE}", key=KEY, fingerprint="").log_id


def _our_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


def _assert_key_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    for record in _our_records(caplog):
        assert KEY not in record.getMessage()
    assert KEY not in caplog.text


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert response["Retry-After"].isdigit()
    problem = response.json()
    assert problem["status"] == 503
    assert problem["code"] == "idempotency_storage_unavailable"


# -- down at claim time --------------------------------------------------------------------


def test_sync_view_fails_closed_with_503(
    serve: Callable[..., str],
    idempotency_settings: Callable[..., None],
    down_database: str,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    idempotency_settings(STORAGE_OPTIONS={"DATABASE": down_database})
    calls: list[int] = []
    url = serve(idempotent(counting(calls)), ROUTE)
    caplog.set_level(logging.INFO, logger=LOGGER)

    response = send(client, url)

    _assert_unavailable(response)
    assert calls == []
    errors = [r for r in _our_records(caplog) if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert _log_id() in errors[0].getMessage()
    _assert_key_not_logged(caplog)


async def test_async_view_fails_closed_with_503(
    serve: Callable[..., str],
    idempotency_settings: Callable[..., None],
    down_database: str,
    async_client: AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    idempotency_settings(STORAGE_OPTIONS={"DATABASE": down_database})
    calls: list[int] = []
    url = serve(idempotent(acounting(calls)), ROUTE)
    caplog.set_level(logging.INFO, logger=LOGGER)

    response = await asend(async_client, url)

    _assert_unavailable(response)
    assert calls == []
    _assert_key_not_logged(caplog)


def test_every_retry_is_refused_while_the_store_is_down(
    serve: Callable[..., str],
    idempotency_settings: Callable[..., None],
    down_database: str,
    client: Client,
) -> None:
    idempotency_settings(STORAGE_OPTIONS={"DATABASE": down_database})
    calls: list[int] = []
    url = serve(idempotent(counting(calls)), ROUTE)

    for _ in range(3):
        _assert_unavailable(send(client, url))
    assert calls == []


def test_sync_view_fails_open_when_asked(
    serve: Callable[..., str],
    idempotency_settings: Callable[..., None],
    down_database: str,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    idempotency_settings(STORAGE_OPTIONS={"DATABASE": down_database}, FAIL_OPEN=True)
    calls: list[int] = []
    url = serve(idempotent(counting(calls)), ROUTE)
    caplog.set_level(logging.INFO, logger=LOGGER)

    response = send(client, url)

    assert response.status_code == 201
    assert response.json() == {"id": 1}
    assert "Idempotent-Replayed" not in response
    assert len(calls) == 1
    warnings = [r for r in _our_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "fail_open" in warnings[0].getMessage()
    assert _log_id() in warnings[0].getMessage()
    _assert_key_not_logged(caplog)


async def test_async_view_fails_open_when_asked(
    serve: Callable[..., str],
    idempotency_settings: Callable[..., None],
    down_database: str,
    async_client: AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    idempotency_settings(STORAGE_OPTIONS={"DATABASE": down_database})
    calls: list[int] = []
    url = serve(idempotent(fail_open=True)(acounting(calls)), ROUTE)
    caplog.set_level(logging.INFO, logger=LOGGER)

    response = await asend(async_client, url)

    assert response.status_code == 201
    assert len(calls) == 1
    warnings = [r for r in _our_records(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "fail_open" in warnings[0].getMessage()
    _assert_key_not_logged(caplog)


def test_requests_that_need_no_store_are_served_while_it_is_down(
    serve: Callable[..., str],
    idempotency_settings: Callable[..., None],
    down_database: str,
    client: Client,
) -> None:
    idempotency_settings(STORAGE_OPTIONS={"DATABASE": down_database})

    @idempotent
    def view(request: HttpRequest) -> HttpResponse:
        return JsonResponse({"method": request.method}, status=200)

    url = serve(view, ROUTE)

    assert send(client, url, method="get").status_code == 200
    assert send(client, url, key=None).status_code == 200


# -- down at completion or release time ----------------------------------------------------


class CompletesOnADownDatabase(DatabaseStorage):
    """Claims on the working default database; completes on one that is down.

    Two real stores composed: what happens when the database goes away while
    the view runs.
    """

    def __init__(self, down_alias: str) -> None:
        super().__init__()
        self.down = DatabaseStorage(database=down_alias)

    def complete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        return self.down.complete(key, token, response)


class ReleasesOnADownDatabase(DatabaseStorage):
    """Claims on the working default database; releases on one that is down."""

    def __init__(self, down_alias: str) -> None:
        super().__init__()
        self.down = DatabaseStorage(database=down_alias)

    def release(self, key: RequestKey, token: str) -> bool:
        return self.down.release(key, token)


LOCK_TIMEOUT = 1.0


@pytest.mark.django_db
def test_completion_failure_keeps_the_views_response(
    serve: Callable[..., str],
    down_database: str,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    storage = CompletesOnADownDatabase(down_database)
    url = serve(idempotent(storage=storage, lock_timeout=LOCK_TIMEOUT)(counting(calls)), ROUTE)
    caplog.set_level(logging.INFO, logger=LOGGER)

    response = send(client, url)

    assert response.status_code == 201
    assert response.json() == {"id": 1}
    errors = [r for r in _our_records(caplog) if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "completion" in errors[0].getMessage()
    _assert_key_not_logged(caplog)

    # The claim stays until lock_timeout: a retry meanwhile is told to wait...
    assert send(client, url).status_code == 409
    assert len(calls) == 1

    # ...and after it, runs the view again (the response was never stored).
    time.sleep(LOCK_TIMEOUT + 0.3)
    retry = send(client, url)

    assert retry.status_code == 201
    assert retry.json() == {"id": 2}
    assert len(calls) == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_async_completion_failure_keeps_the_views_response(
    serve: Callable[..., str],
    down_database: str,
    async_client: AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    storage = CompletesOnADownDatabase(down_database)
    url = serve(idempotent(storage=storage, lock_timeout=LOCK_TIMEOUT)(acounting(calls)), ROUTE)
    caplog.set_level(logging.INFO, logger=LOGGER)

    response = await asend(async_client, url)

    assert response.status_code == 201
    assert response.json() == {"id": 1}
    assert [r for r in _our_records(caplog) if r.levelno == logging.ERROR]
    _assert_key_not_logged(caplog)
    assert (await asend(async_client, url)).status_code == 409

    await asyncio.sleep(LOCK_TIMEOUT + 0.3)
    retry = await asend(async_client, url)

    assert retry.status_code == 201
    assert len(calls) == 2


@pytest.mark.django_db
def test_release_failure_keeps_the_views_error_response(
    serve: Callable[..., str],
    down_database: str,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[HttpRequest] = []

    @idempotent(storage=ReleasesOnADownDatabase(down_database), lock_timeout=LOCK_TIMEOUT)
    def view(request: HttpRequest) -> HttpResponse:
        calls.append(request)
        return JsonResponse({"error": "upstream timeout"}, status=502)

    url = serve(view, ROUTE)
    caplog.set_level(logging.INFO, logger=LOGGER)

    response = send(client, url)

    assert response.status_code == 502
    assert response.json() == {"error": "upstream timeout"}
    errors = [r for r in _our_records(caplog) if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "release" in errors[0].getMessage()
    _assert_key_not_logged(caplog)

    time.sleep(LOCK_TIMEOUT + 0.3)
    assert send(client, url).status_code == 502
    assert len(calls) == 2


@pytest.mark.django_db
def test_release_failure_after_an_exception_reraises_the_views_exception(
    serve: Callable[..., str],
    down_database: str,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class PaymentGatewayError(Exception):
        pass

    @idempotent(storage=ReleasesOnADownDatabase(down_database), lock_timeout=LOCK_TIMEOUT)
    def view(request: HttpRequest) -> HttpResponse:
        raise PaymentGatewayError("card declined by the gateway")

    url = serve(view, ROUTE)
    caplog.set_level(logging.INFO, logger=LOGGER)

    with pytest.raises(PaymentGatewayError):
        send(client, url)

    assert [r for r in _our_records(caplog) if r.levelno == logging.ERROR]
