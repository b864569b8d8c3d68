"""The Redis store through the decorator, its clock and expiry, its round trips
(counted by the Redis server), its checks, and Redis being unreachable.

The store contract (claim, complete, release, fencing, takeover, expiry,
concurrency) runs on Redis in ``test_storage_contract.py``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.test import AsyncClient, Client
from helpers import (
    RUNS_SYSTEM_CHECKS,
    acreate_order,
    asend,
    create_order,
    orders,
    problem,
    replayed,
    send,
)

from django_idempotency.decorators import idempotent
from django_idempotency.storage import BaseStorage

pytest.importorskip("django_redis", reason="the redis extra is not installed")

from django_idempotency.storage import RedisStorage

CACHE = "idempotency"
DEAD = "idempotency_down"


@pytest.fixture
def store(redis_store: RedisStorage) -> RedisStorage:
    return redis_store


@pytest.fixture
async def async_store(store: RedisStorage) -> AsyncIterator[RedisStorage]:
    yield store
    await store.aclose()


@pytest.fixture
def dead_cache(settings: Any) -> str:
    """A django-redis cache on a closed port: Redis is down."""
    settings.CACHES = {
        **settings.CACHES,
        DEAD: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        },
    }
    return DEAD


def _evalsha_calls(store: RedisStorage) -> int:
    stats = store.client().info("commandstats")
    calls = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        calls += int(stats.get(name, {}).get("calls", 0))
    return calls


# -- through the decorator ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_first_runs_retry_replays_mismatch_refused(
    client: Client, serve: Callable[..., str], store: RedisStorage
) -> None:
    url = serve(idempotent(storage=store)(create_order))

    first = send(client, url)
    retry = send(client, url)
    other = send(client, url, {"item": "tea"})

    assert first.status_code == 201
    assert not replayed(first)
    assert retry.status_code == 201
    assert replayed(retry)
    assert retry.content == first.content
    assert retry["Location"] == first["Location"]
    problem(other, 422, "idempotency_key_mismatch")
    assert orders() == 1


@pytest.mark.django_db(transaction=True)
async def test_async_view_uses_the_asyncio_client(
    async_client: AsyncClient,
    serve: Callable[..., str],
    async_store: RedisStorage,
    close_orm_thread_connections: None,
) -> None:
    url = serve(idempotent(storage=async_store)(acreate_order))

    first = await asend(async_client, url)
    retry = await asend(async_client, url)

    assert first.status_code == 201
    assert replayed(retry)
    assert retry.content == first.content
    assert async_store._async_clients, "the async path never built an asyncio client"


@pytest.mark.django_db(transaction=True)
def test_records_carry_their_ttl_in_redis(
    client: Client, serve: Callable[..., str], store: RedisStorage
) -> None:
    url = serve(idempotent(storage=store, ttl=120, lock_timeout=5)(create_order))
    send(client, url)

    redis_keys = list(store.client().scan_iter(match=f"{store.key_prefix}:*"))
    assert len(redis_keys) == 1
    remaining_ms = store.client().pttl(redis_keys[0])
    assert 110_000 < remaining_ms <= 120_000
    # One slot per record: the digest is the Cluster hash tag.
    assert redis_keys[0].decode().endswith("}")
    assert "{" in redis_keys[0].decode()


@pytest.fixture
def private_store(settings: Any) -> Iterator[RedisStorage]:
    """A store on a Redis server of its own, whose command counts no other
    test (or test process) adds to."""
    import redis_servers

    with redis_servers.plain() as server:
        settings.CACHES = {
            **settings.CACHES,
            "private": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{server.port}/0",
            },
        }
        yield RedisStorage(cache_alias="private")


@pytest.mark.django_db(transaction=True)
def test_one_round_trip_to_claim_and_one_to_complete(
    client: Client, serve: Callable[..., str], private_store: RedisStorage
) -> None:
    store = private_store
    url = serve(idempotent(storage=store)(create_order))
    send(client, url, key="warm-up")  # loads the scripts into the server

    before = _evalsha_calls(store)
    send(client, url)
    fresh = _evalsha_calls(store) - before
    before = _evalsha_calls(store)
    send(client, url)
    replay = _evalsha_calls(store) - before

    assert fresh == 2  # claim, complete
    assert replay == 1  # claim, which returns the stored response


# -- Redis down ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_redis_down_fails_closed(
    client: Client, serve: Callable[..., str], dead_cache: str
) -> None:
    url = serve(idempotent(storage=RedisStorage(cache_alias=dead_cache))(create_order))

    response = send(client, url)

    problem(response, 503, "idempotency_storage_unavailable")
    assert orders() == 0


@pytest.mark.django_db
def test_redis_down_with_fail_open_runs_the_view_and_warns(
    client: Client,
    serve: Callable[..., str],
    dead_cache: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RedisStorage(cache_alias=dead_cache)
    url = serve(idempotent(storage=store, fail_open=True)(create_order))

    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        response = send(client, url, key="secret-key-never-logged")

    assert response.status_code == 201
    assert orders() == 1
    assert any("fail_open" in record.getMessage() for record in caplog.records)
    assert all("secret-key-never-logged" not in record.getMessage() for record in caplog.records)


async def test_redis_down_fails_closed_for_async_views(
    async_client: AsyncClient, serve: Callable[..., str], dead_cache: str
) -> None:
    store = RedisStorage(cache_alias=dead_cache)
    runs: list[int] = []

    async def view(request: Any) -> Any:
        runs.append(1)
        raise AssertionError("the view must not run")

    url = serve(idempotent(storage=store)(view))
    try:
        response = await asend(async_client, url)
    finally:
        await store.aclose()

    problem(response, 503, "idempotency_storage_unavailable")
    assert runs == []


# -- operations ---------------------------------------------------------------------------------


def test_purge_command_says_redis_expires_keys_itself(
    settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings.IDEMPOTENCY = {
        "STORAGE": "django_idempotency.storage.RedisStorage",
        "STORAGE_OPTIONS": {"CACHE_ALIAS": CACHE},
    }

    call_command("purge_idempotency_keys")

    assert "Nothing to purge: RedisStorage expires keys by itself." in capsys.readouterr().out


def test_check_passes_for_a_django_redis_cache(store: BaseStorage) -> None:
    assert store.check() == []


def test_check_reports_an_unknown_cache_alias() -> None:
    messages = RedisStorage(cache_alias="no-such-cache").check()

    assert [message.id for message in messages] == ["django_idempotency.E020"]


@pytest.mark.parametrize("alias", ["no-such-cache", "default"])  # none; LocMemCache
def test_the_server_checks_of_a_cache_without_redis_add_nothing(alias: str) -> None:
    """E020 and E021 are the configuration checks' to report; the server
    checks (``check --database``) find no Redis to ask, and say nothing."""
    store = RedisStorage(cache_alias=alias)

    assert store.check(databases=["default"], servers_only=True) == []
    assert len(store.check(databases=["default"])) == 1


def test_check_reports_a_cache_that_is_not_django_redis() -> None:
    messages = RedisStorage(cache_alias="default").check()  # LocMemCache

    assert [message.id for message in messages] == ["django_idempotency.E021"]
    assert "LocMemCache" in messages[0].msg


@RUNS_SYSTEM_CHECKS
def test_check_runs_through_the_system_checks(settings: Any) -> None:
    from django.core.management import CommandError

    settings.IDEMPOTENCY = {
        "STORAGE": "django_idempotency.storage.RedisStorage",
        "STORAGE_OPTIONS": {"CACHE_ALIAS": "no-such-cache"},
    }

    with pytest.raises(CommandError, match=r"django_idempotency\.E020"):
        call_command("check")


def test_unreachable_cluster_fails_closed(
    client: Client, serve: Callable[..., str], dead_cache: str
) -> None:
    # redis-py's cluster client raises RedisClusterException, not RedisError.
    url = serve(
        idempotent(storage=RedisStorage(cache_alias=dead_cache, cluster=True))(create_order)
    )

    response = send(client, url)

    problem(response, 503, "idempotency_storage_unavailable")


@pytest.mark.django_db
def test_async_views_served_by_wsgi_leave_no_connection_behind(
    serve: Callable[..., str], private_store: RedisStorage
) -> None:
    store = private_store  # a server whose connections no other test process opens

    # Under WSGI each async view runs in an event loop of its own, which ends
    # with the request; the store's asyncio client must end with it.
    async def view(request: Any) -> Any:
        from django.http import JsonResponse

        return JsonResponse({}, status=201)

    url = serve(idempotent(storage=store)(view))
    server = store.client()
    before = int(server.info("clients")["connected_clients"])

    for number in range(20):
        assert send(Client(), url, key=f"wsgi-{number}").status_code == 201
    after = int(server.info("clients")["connected_clients"])

    assert after - before < 5, f"{after - before} connections left open by 20 requests"
    assert store._async_clients == {}


@pytest.fixture
def full_redis(settings: Any) -> Iterator[str]:
    """A private Redis at its maxmemory, with maxmemory-policy noeviction."""
    import redis_servers

    with redis_servers.plain("--maxmemory-policy", "noeviction") as full:
        server = full.client()
        for number in range(200):
            server.set(f"filler-{number}", "x" * 10_000)
        server.config_set("maxmemory", int(server.info("memory")["used_memory"]) // 2)
        server.close()
        settings.CACHES = {
            **settings.CACHES,
            "full": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{full.port}/0",
            },
        }
        yield "full"


@pytest.mark.django_db
def test_a_full_redis_refuses_the_claim_before_the_view_runs(
    client: Client, serve: Callable[..., str], full_redis: str
) -> None:
    url = serve(idempotent(storage=RedisStorage(cache_alias=full_redis))(create_order))

    response = send(client, url)

    problem(response, 503, "idempotency_storage_unavailable")
    assert orders() == 0


@pytest.fixture
def silent_redis(settings: Any) -> Iterator[str]:
    """A django-redis cache whose server accepts connections and never answers:
    Redis hanging, as under a long fork or a network partition."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            accepted.append(connection)  # held open, never read from or answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    settings.CACHES = {
        **settings.CACHES,
        "silent": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        },
    }
    yield "silent"
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.mark.django_db
def test_a_redis_that_does_not_answer_times_out_into_a_503(
    client: Client, serve: Callable[..., str], silent_redis: str
) -> None:
    url = serve(idempotent(storage=RedisStorage(cache_alias=silent_redis))(create_order))

    response = send(client, url)

    problem(response, 503, "idempotency_storage_unavailable")
    assert orders() == 0
