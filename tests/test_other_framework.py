"""An adapter of another framework, built on the public contract alone.

``demo.rpc`` is a small JSON-RPC framework that knows nothing of
idempotency; ``demo.rpc_idempotency`` is its adapter, the one shown in
``docs/howto/other-frameworks.rst``. Through it, a method runs once per key,
retries replay it, and this package's answers come in the framework's own
error format.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import AsyncClient, Client
from helpers import asend, in_flight_claim, orders, replayed, send

from demo.models import Order
from demo.rpc_idempotency import Idempotent
from django_idempotency.conf import OptionError
from django_idempotency.models import IdempotencyKey

URL = "/rpc/"
CREATE = {"method": "orders.create", "params": {"item": "tea", "quantity": 2}}


def rpc_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status
    assert json.loads(response.content)["error"]["code"] == code


@pytest.mark.django_db
def test_a_method_runs_once_and_its_retry_replays_byte_for_byte(client: Client) -> None:
    first = send(client, URL, CREATE)
    retry = send(client, URL, CREATE)

    assert first.status_code == 200
    assert json.loads(first.content)["result"]["item"] == "tea"
    assert replayed(retry)
    assert (retry.status_code, retry.content) == (200, first.content)
    assert retry["Content-Type"] == first["Content-Type"]
    assert orders() == 1


@pytest.mark.django_db
def test_the_packages_answers_come_in_the_frameworks_error_format(client: Client) -> None:
    rpc_error(send(client, URL, CREATE, key=None), 400, "idempotency_key_missing")
    send(client, URL, CREATE)
    changed = {"method": "orders.create", "params": {"item": "tea", "quantity": 3}}

    rpc_error(send(client, URL, changed), 422, "idempotency_key_mismatch")
    assert orders() == 1


@pytest.mark.django_db
def test_a_call_still_running_is_answered_with_a_conflict(client: Client) -> None:
    in_flight_claim(URL, CREATE)

    response = send(client, URL, CREATE)

    rpc_error(response, 409, "idempotency_key_in_use")
    assert response["Retry-After"] == "1"
    assert orders() == 0


@pytest.mark.django_db
def test_a_method_that_raises_releases_its_key(client: Client) -> None:
    failing = {"method": "orders.create_failing", "params": {}}
    client.raise_request_exception = False

    assert send(client, URL, failing).status_code == 500
    assert not IdempotencyKey.objects.exists()
    assert send(client, URL, failing).status_code == 500
    assert orders() == 2  # the retry ran again: nothing was stored for it


@pytest.mark.django_db
def test_methods_without_the_adapter_are_left_alone(client: Client) -> None:
    response = send(client, URL, {"method": "orders.count"}, key=None)

    assert json.loads(response.content) == {"result": 0}
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_the_async_twins(async_client: AsyncClient) -> None:
    call = {"method": "orders.create_async", "params": {"item": "tea"}}

    first = await asend(async_client, "/async/rpc/", call)
    retry = await asend(async_client, "/async/rpc/", call)

    assert first.status_code == 200
    assert replayed(retry)
    assert retry.content == first.content
    assert await Order.objects.acount() == 1


def test_its_options_are_checked_when_the_method_is_defined() -> None:
    with pytest.raises(OptionError, match=r"Idempotent\(ttl=\.\.\.\)"):
        Idempotent(ttl=-1)
    with pytest.raises(TypeError, match=r"Did you mean Idempotent\(required=\.\.\.\)\?"):
        Idempotent(requried=True)
