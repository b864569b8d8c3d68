"""Leases kept alive while the view runs, and completions that ride out a blip.

A slow view keeps its key: a retry that comes after ``lock_timeout`` gets
``409``, not a second run. A hung view keeps it for ``max_lock_time`` at
most. A completion or release that meets a store blip is retried until the
store is back, so the key is not left to lapse. The blips are real: the
store is reached through a TCP proxy (``tests/proxy.py``) that the test cuts
and restores.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from helpers import (
    ORDER,
    AsyncGate,
    Gate,
    InBackground,
    acreate_order,
    aorders,
    asend,
    create_order,
    orders,
    problem,
    replayed,
    send,
)
from proxy import Proxy

from django_idempotency import leases
from django_idempotency.decorators import idempotent
from django_idempotency.storage import BaseStorage, RequestKey, StorageError
from django_idempotency.storage.base import Claim

pytestmark = pytest.mark.django_db(transaction=True)

LOGGER = "django_idempotency"

#: The lease of the slow-view tests: renewed every 0.2 s.
LEASE = 0.6
#: How long the test holds the first request: well past two leases.
HELD = 2.5 * LEASE


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == LOGGER)


def _lease_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "django-idempotency-leases"]


# -- a slow view keeps its key ---------------------------------------------------------------------


def test_a_view_slower_than_its_lease_keeps_its_key(
    client: Client, serve: Callable[..., str], gate: Gate, store: BaseStorage
) -> None:
    url = serve(idempotent(storage=store, lock_timeout=LEASE)(gate(create_order)))
    first = InBackground(lambda c: send(c, url))
    assert gate.entered.wait(10)
    time.sleep(HELD)  # the first lease has long passed; the renewed one has not

    retry = send(client, url)

    problem(retry, 409, "idempotency_key_in_use")
    gate.release.set()
    answer = first.result()
    assert answer.status_code == 201
    later = send(client, url)
    assert replayed(later)
    assert later.content == answer.content
    assert gate.runs == 1
    assert orders() == 1


async def test_an_async_view_slower_than_its_lease_keeps_its_key(
    async_client: AsyncClient,
    serve: Callable[..., str],
    gate: AsyncGate,
    store: BaseStorage,
    close_orm_thread_connections: None,
) -> None:
    url = serve(idempotent(storage=store, lock_timeout=LEASE)(gate(acreate_order)))
    first = asyncio.ensure_future(asend(async_client, url))
    await asyncio.wait_for(gate.entered.wait(), 10)
    await asyncio.sleep(HELD)

    retry = await asend(AsyncClient(), url)

    problem(retry, 409, "idempotency_key_in_use")  # type: ignore[arg-type]
    gate.release.set()
    answer = await first
    assert answer.status_code == 201
    later = await asend(async_client, url)
    assert replayed(later)
    assert later.content == answer.content
    assert gate.runs == 1
    assert await aorders() == 1


def test_an_atomic_view_slower_than_its_lease_keeps_its_key_and_commits(
    client: Client, serve: Callable[..., str], gate: Gate, db_vendor: str
) -> None:
    if db_vendor == "sqlite":
        pytest.skip("SQLite has one writer: the view's transaction blocks every other write")
    url = serve(idempotent(lock_timeout=LEASE, atomic=True)(gate(create_order)))
    first = InBackground(lambda c: send(c, url))
    assert gate.entered.wait(10)
    time.sleep(HELD)

    problem(send(client, url), 409, "idempotency_key_in_use")
    gate.release.set()
    answer = first.result()

    assert answer.status_code == 201, "the slow atomic view lost its claim"
    assert replayed(send(client, url))
    assert orders() == 1


def test_a_hung_view_keeps_its_key_for_max_lock_time_only(
    client: Client,
    serve: Callable[..., str],
    gate: Gate,
    store: BaseStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Renewals stop ``max_lock_time`` after the claim; the lease then runs
    out, a retry takes the key over, and the hung view's late completion is
    refused (fencing): every later retry gets the takeover's answer."""
    url = serve(idempotent(storage=store, lock_timeout=0.4, max_lock_time=1.0)(gate(create_order)))
    caplog.set_level(logging.INFO, logger=LOGGER)
    hung = InBackground(lambda c: send(c, url))
    assert gate.entered.wait(10)
    time.sleep(1.0 + 0.4 + 0.4)  # the cap, one lease, and a margin

    takeover = send(client, url)
    gate.release.set()
    late = hung.result()

    assert takeover.status_code == 201
    assert not replayed(takeover)
    assert late.status_code == 201
    assert late.content != takeover.content
    again = send(client, url)
    assert replayed(again)
    assert again.content == takeover.content
    messages = _messages(caplog)
    assert "lease no longer renewed" in messages
    assert "claim lost before completion" in messages
    assert orders() == 2


def test_without_renewals_a_slow_view_is_taken_over_as_before(
    client: Client, serve: Callable[..., str], gate: Gate
) -> None:
    """``max_lock_time`` not above ``lock_timeout`` turns renewals off."""
    url = serve(idempotent(lock_timeout=LEASE, max_lock_time=LEASE)(gate(create_order)))
    first = InBackground(lambda c: send(c, url))
    assert gate.entered.wait(10)
    time.sleep(LEASE + 0.4)

    takeover = send(client, url)
    gate.release.set()

    assert takeover.status_code == 201
    assert not replayed(takeover)
    assert first.result().status_code == 201
    assert orders() == 2


def test_one_renewer_thread_serves_every_live_claim(
    serve: Callable[..., str], store: BaseStorage
) -> None:
    held = threading.Event()
    entered = threading.Semaphore(0)

    def slow(request: HttpRequest) -> HttpResponse:
        entered.release()
        assert held.wait(10)
        return create_order(request)

    url = serve(idempotent(storage=store, lock_timeout=0.3)(slow))
    requests = [InBackground(lambda c, key=f"k-{n}": send(c, url, ORDER, key)) for n in range(8)]
    for _ in requests:
        assert entered.acquire(timeout=10)
    time.sleep(0.5)  # renewals are due every 0.1 s

    live = leases.renewer().leases
    threads = _lease_threads()
    held.set()
    statuses = [r.result().status_code for r in requests]

    assert len(live) == 8
    assert len(threads) == 1
    assert statuses == [201] * 8
    assert leases.renewer().leases == frozenset(), "a settled claim is still renewed"
    assert orders() == 8


# -- completions and releases ride out a blip ------------------------------------------------------


@pytest.fixture
def cut_store(settings: Any) -> Iterator[tuple[BaseStorage, Proxy]]:
    """The Redis store, reached through a proxy the test can cut. (The
    database store meets the same blips in the reliability suite,
    ``tests/test_faults.py``, where a server pool reaches its keys through
    such a proxy.)"""
    pytest.importorskip("django_redis", reason="the redis extra is not installed")
    from django_idempotency.storage import RedisStorage

    url = urlparse(settings.CACHES["idempotency"]["LOCATION"])
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 6379)
    settings.CACHES = {
        **settings.CACHES,
        "idempotency_cut": {
            **settings.CACHES["idempotency"],
            "LOCATION": f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}",
        },
    }
    store = RedisStorage(cache_alias="idempotency_cut", key_prefix=f"cut-{uuid.uuid4().hex}")
    try:
        yield store, proxy
    finally:
        proxy.close()


def _cut_while_the_view_runs(proxy: Proxy, gate: Gate, *, back_after: float | None) -> None:
    """Cut the store once the view has started, then let the view finish;
    restore the store ``back_after`` seconds later (never, if None)."""
    assert gate.entered.wait(10)
    proxy.cut()
    if back_after is not None:
        threading.Timer(back_after, proxy.restore).start()
    gate.release.set()


@pytest.mark.parametrize("renews", [True, False], ids=["renewing", "store-without-renew"])
def test_a_completion_rides_out_a_blip(
    client: Client,
    serve: Callable[..., str],
    gate: Gate,
    cut_store: tuple[BaseStorage, Proxy],
    caplog: pytest.LogCaptureFixture,
    renews: bool,
) -> None:
    """Also with a store of a project's own that cannot renew leases: its
    completions are retried all the same, within the one lease they have."""
    store, proxy = cut_store
    if not renews:
        from django_idempotency.storage import RedisStorage

        class WithoutRenew(RedisStorage):
            renew = BaseStorage.renew  # type: ignore[assignment]

        store = WithoutRenew(cache_alias="idempotency_cut", key_prefix=f"cut-{uuid.uuid4().hex}")
        assert not store.renews_leases
    url = serve(idempotent(storage=store, lock_timeout=5)(gate(create_order)))
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = InBackground(lambda c: send(c, url))
    _cut_while_the_view_runs(proxy, gate, back_after=0.8)

    answer = first.result()
    retry = send(client, url)

    assert answer.status_code == 201
    assert replayed(retry), "the completion gave up instead of waiting for the store"
    assert retry.content == answer.content
    assert "unavailable at completion" not in _messages(caplog)
    assert orders() == 1


async def test_an_async_completion_rides_out_a_blip(
    async_client: AsyncClient,
    serve: Callable[..., str],
    cut_store: tuple[BaseStorage, Proxy],
    close_orm_thread_connections: None,
) -> None:
    store, proxy = cut_store
    gate = AsyncGate()
    url = serve(idempotent(storage=store, lock_timeout=5)(gate(acreate_order)))
    first = asyncio.ensure_future(asend(async_client, url))
    await asyncio.wait_for(gate.entered.wait(), 10)
    proxy.cut()
    asyncio.get_running_loop().call_later(0.8, proxy.restore)
    gate.release.set()

    answer = await first
    retry = await asend(async_client, url)

    assert answer.status_code == 201
    assert replayed(retry)
    assert retry.content == answer.content
    assert await aorders() == 1


def test_a_release_rides_out_a_blip(
    client: Client,
    serve: Callable[..., str],
    gate: Gate,
    cut_store: tuple[BaseStorage, Proxy],
) -> None:
    """A 5xx releases the key; through a blip, the release still lands, so
    the retry runs at once instead of waiting for the lease to pass."""
    store, proxy = cut_store
    calls: list[int] = []

    def failing_once(request: HttpRequest) -> HttpResponse:
        calls.append(1)
        if len(calls) == 1:
            return HttpResponse(status=503)
        return create_order(request)

    url = serve(idempotent(storage=store, lock_timeout=30)(gate(failing_once)))
    first = InBackground(lambda c: send(c, url))
    _cut_while_the_view_runs(proxy, gate, back_after=0.8)

    assert first.result().status_code == 503
    retry = send(client, url)

    assert retry.status_code == 201, "the release was lost: the key stays locked"
    assert len(calls) == 2


def test_a_completion_gives_up_at_the_end_of_the_lease(
    client: Client,
    serve: Callable[..., str],
    gate: Gate,
    cut_store: tuple[BaseStorage, Proxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that stays away longer than the lease: the client gets its
    answer once the lease is over (not after the 10 s ceiling), the failure
    is logged, and the claim is left to lapse as after a crash."""
    store, proxy = cut_store
    url = serve(idempotent(storage=store, lock_timeout=1)(gate(create_order)))
    caplog.set_level(logging.INFO, logger=LOGGER)
    first = InBackground(lambda c: send(c, url))
    _cut_while_the_view_runs(proxy, gate, back_after=None)

    answer = first.result()
    proxy.restore()
    time.sleep(1.2)  # the lease has passed
    retry = send(client, url)

    assert answer.status_code == 201
    assert "store unavailable at completion" in _messages(caplog)
    assert retry.status_code == 201
    assert not replayed(retry)
    assert orders() == 2


def test_a_settlement_in_the_requests_transaction_is_one_attempt() -> None:
    """A claim that joined the request's transaction has no lease (nobody
    else sees it), and a failed completion there is not retried: the
    transaction it would run in is broken."""
    attempts: list[int] = []

    def failing() -> bool:
        attempts.append(1)
        raise StorageError("down")

    with pytest.raises(StorageError):
        leases.settle(None, 10, failing)
    assert attempts == [1]


def test_a_lost_claim_is_no_longer_renewed(store: BaseStorage) -> None:
    key = RequestKey(scope="leases", key=uuid.uuid4().hex, fingerprint="fp")
    claim: Claim = store.claim(key, ttl=60, lease=0.3)
    assert claim.token is not None
    store.release(key, claim.token)

    lease = leases.Lease(
        store, key, claim.token, length=0.3, limit=60, since=time.monotonic()
    ).start()
    deadline = time.monotonic() + 5
    while lease in leases.renewer().leases and time.monotonic() < deadline:
        time.sleep(0.05)

    assert lease.stopped
    assert lease not in leases.renewer().leases
