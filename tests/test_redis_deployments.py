"""The Redis store on Redis as people deploy it, each a real server started
here: TLS with client certificates, Sentinel, an ACL user, a blocking pool
with few connections; a configuration with no asyncio equivalent; a Redis
that evicts keys.

For each deployment, sync and async views protected by the store behave
alike: the first request runs, a retry replays, concurrent claims of one
key are exclusive. Every server is stopped and its files deleted at the end
of the module (:mod:`redis_servers`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from helpers import (
    RUNS_SYSTEM_CHECKS,
    acreate_order,
    create_order,
    new_key,
    orders,
    replayed,
    send,
)

pytest.importorskip("django_redis", reason="the redis extra is not installed")

import redis_servers

from django_idempotency.decorators import idempotent
from django_idempotency.storage import RedisStorage

ALIAS = "deployment"

# -- the servers, one of each per module ----------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[redis_servers.Server, redis_servers.Certificates]]:
    with redis_servers.tls() as server:
        yield server


@pytest.fixture(scope="module")
def sentinel_servers() -> Iterator[redis_servers.Sentinel]:
    with redis_servers.sentinel() as servers:
        yield servers


@pytest.fixture(scope="module")
def plain_server() -> Iterator[redis_servers.Server]:
    with redis_servers.plain() as server:
        yield server


@pytest.fixture(scope="module")
def evicting_server() -> Iterator[redis_servers.Server]:
    with redis_servers.plain("--maxmemory-policy", "allkeys-lru") as server:
        yield server


def use_cache(settings: Any, location: str, **options: Any) -> RedisStorage:
    """Point the cache :data:`ALIAS` at ``location`` with ``options``; a store on it.

    django-redis keeps one connection pool per URL for the whole process, the
    first one made for it: each configuration here has a URL of its own."""
    settings.CACHES = {
        **settings.CACHES,
        ALIAS: {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": location,
            "OPTIONS": options,
        },
    }
    return RedisStorage(cache_alias=ALIAS, key_prefix=f"test-{uuid.uuid4().hex}")


# Generous: a TLS handshake on a loaded machine (the suite runs in several
# processes) can take seconds. These servers are up; no test waits these out.
TIMEOUTS = {"SOCKET_CONNECT_TIMEOUT": 10, "SOCKET_TIMEOUT": 10}


def tls_store(request: pytest.FixtureRequest, settings: Any) -> RedisStorage:
    server, certificates = request.getfixturevalue("tls_server")
    return use_cache(
        settings,
        f"rediss://127.0.0.1:{server.port}/0",
        **TIMEOUTS,
        CONNECTION_POOL_KWARGS={
            "ssl_cert_reqs": "required",
            "ssl_ca_certs": str(certificates.ca),
            "ssl_certfile": str(certificates.client_cert),
            "ssl_keyfile": str(certificates.client_key),
            "max_connections": 20,
            "health_check_interval": 30,
        },
    )


def sentinel_store(request: pytest.FixtureRequest, settings: Any) -> RedisStorage:
    setup = request.getfixturevalue("sentinel_servers")
    return use_cache(
        settings,
        f"redis://{setup.service}/0",
        **TIMEOUTS,
        CLIENT_CLASS="django_redis.client.SentinelClient",
        CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
        SENTINELS=[(redis_servers.HOST, setup.watcher.port)],
        SENTINEL_KWARGS={"socket_timeout": 2},
    )


def acl_user_store(request: pytest.FixtureRequest, settings: Any) -> RedisStorage:
    server = request.getfixturevalue("plain_server")
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "idempotency", "on", ">s3cret", "~*", "+@all")
    admin.close()
    return use_cache(
        settings,
        f"redis://127.0.0.1:{server.port}/1",
        **TIMEOUTS,
        USERNAME="idempotency",
        PASSWORD="s3cret",
    )


def blocking_pool_store(request: pytest.FixtureRequest, settings: Any) -> RedisStorage:
    server = request.getfixturevalue("plain_server")
    return use_cache(
        settings,
        f"redis://127.0.0.1:{server.port}/2",
        **TIMEOUTS,
        CONNECTION_POOL_CLASS="redis.BlockingConnectionPool",
        CONNECTION_POOL_KWARGS={"max_connections": 2, "timeout": 5},
    )


DEPLOYMENTS: dict[str, Callable[[pytest.FixtureRequest, Any], RedisStorage]] = {
    "tls-client-certificates": tls_store,
    "sentinel": sentinel_store,
    "acl-user": acl_user_store,
    "blocking-pool": blocking_pool_store,
}


@pytest.fixture(params=list(DEPLOYMENTS))
def store(
    request: pytest.FixtureRequest,
    settings: Any,
    tls_server: Any,
    sentinel_servers: Any,
    plain_server: Any,
) -> RedisStorage:
    # The servers are named here, not only looked up by the builders: pytest
    # stops the servers a parametrized fixture looks up when its parameter
    # changes. (They may still stop and start again between tests, when
    # pytest-django runs other modules' tests in between.)
    return DEPLOYMENTS[request.param](request, settings)


# -- every deployment: sync and async views alike ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sync_and_async_views_run_once_then_replay(
    store: RedisStorage, client: Client, serve: Callable[..., str]
) -> None:
    urls = {
        "sync": serve(idempotent(storage=store)(create_order), "sync/"),
        "async": serve(idempotent(storage=store)(acreate_order), "async/"),
    }

    for kind, url in urls.items():
        first = send(client, url, key=f"{kind}-key")
        retry = send(client, url, key=f"{kind}-key")

        assert first.status_code == 201, (kind, first.content)
        assert not replayed(first)
        assert replayed(retry), kind
        assert retry.content == first.content
    assert orders() == 2
    # Nothing to say about it: async views had an asyncio client of their own.
    assert store.check() == []


def test_concurrent_claims_of_one_key_are_exclusive(store: RedisStorage) -> None:
    contenders = 8
    sync_key, async_key = new_key(), new_key()
    start = threading.Barrier(contenders)
    tokens: list[str | None] = []

    def claim() -> None:
        start.wait()
        tokens.append(store.claim(sync_key, ttl=60, lease=30).token)

    threads = [threading.Thread(target=claim) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    async def claim_all() -> list[bool]:
        try:
            claims = await asyncio.gather(
                *(store.aclaim(async_key, ttl=60, lease=30) for _ in range(contenders))
            )
        finally:
            await store.aclose()
        return [c.claimed for c in claims]

    async_claims = asyncio.run(claim_all())

    assert len(tokens) == contenders
    assert sum(token is not None for token in tokens) == 1
    assert async_claims.count(True) == 1


def test_the_async_client_keeps_to_the_pool_size(
    request: pytest.FixtureRequest, settings: Any, plain_server: redis_servers.Server
) -> None:
    store = blocking_pool_store(request, settings)
    server = plain_server.client()
    before = int(server.info("clients")["connected_clients"])
    seen: list[int] = []

    async def claim_many() -> None:
        try:
            await asyncio.gather(*(store.aclaim(new_key(), ttl=60, lease=30) for _ in range(30)))
            seen.append(int(server.info("clients")["connected_clients"]))
        finally:
            await store.aclose()

    asyncio.run(claim_many())
    server.close()

    assert seen[0] - before <= 2  # CONNECTION_POOL_KWARGS max_connections


# -- configurations without an asyncio equivalent -------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_pool_class_without_asyncio_version_runs_async_views_in_threads(
    plain_server: redis_servers.Server,
    settings: Any,
    client: Client,
    serve: Callable[..., str],
) -> None:
    store = use_cache(
        settings,
        f"redis://127.0.0.1:{plain_server.port}/3",
        CONNECTION_POOL_CLASS="redis_servers.ThreadCountingPool",
    )
    url = serve(idempotent(storage=store)(acreate_order))
    made = redis_servers.ThreadCountingPool.made

    first = send(client, url)
    retry = send(client, url)

    assert first.status_code == 201
    assert replayed(retry)
    assert orders() == 1
    assert redis_servers.ThreadCountingPool.made > made  # the sync client served it
    [warning] = store.check()
    assert warning.id == "django_idempotency.W022"
    assert "redis_servers.ThreadCountingPool" in warning.msg


def test_an_option_the_asyncio_classes_refuse_is_reported(settings: Any) -> None:
    store = use_cache(
        settings,
        "rediss://127.0.0.1:9/5",  # never reached: the check connects to nothing
        CONNECTION_POOL_KWARGS={"ssl_validate_ocsp": True},
    )

    [warning] = store.check()

    assert warning.id == "django_idempotency.W022"
    assert "ssl_validate_ocsp" in warning.msg


def test_a_sharded_cache_is_refused(plain_server: redis_servers.Server, settings: Any) -> None:
    store = use_cache(
        settings,
        [f"redis://127.0.0.1:{plain_server.port}/4"],
        CLIENT_CLASS="django_redis.client.ShardClient",
    )

    [error] = store.check()

    assert error.id == "django_idempotency.E022"
    assert "ShardClient" in str(error.hint)


# -- eviction --------------------------------------------------------------------------------


def test_checks_asked_to_reach_servers_warn_of_an_evicting_redis(
    evicting_server: redis_servers.Server,
    plain_server: redis_servers.Server,
    settings: Any,
) -> None:
    evicting = use_cache(settings, f"redis://127.0.0.1:{evicting_server.port}/0")

    assert evicting.check() == []  # without databases, checks make no I/O
    assert evicting.check(databases=[]) == []
    [warning] = evicting.check(databases=["default"])
    assert warning.id == "django_idempotency.W023"
    assert "maxmemory-policy allkeys-lru" in warning.msg
    assert "noeviction" in str(warning.hint)

    keeping = use_cache(settings, f"redis://127.0.0.1:{plain_server.port}/0")
    assert keeping.check(databases=["default"]) == []


@RUNS_SYSTEM_CHECKS
def test_the_check_command_with_a_database_warns_of_an_evicting_redis(
    evicting_server: redis_servers.Server, settings: Any
) -> None:
    store = use_cache(settings, f"redis://127.0.0.1:{evicting_server.port}/0")
    settings.IDEMPOTENCY = {
        "STORAGE": "django_idempotency.storage.RedisStorage",
        "STORAGE_OPTIONS": {"CACHE_ALIAS": ALIAS, "KEY_PREFIX": store.key_prefix},
    }
    plain, asked = StringIO(), StringIO()

    call_command("check", stdout=plain, stderr=plain)
    call_command("check", databases=["default"], stdout=asked, stderr=asked)

    assert "django_idempotency.W023" not in plain.getvalue()
    assert "django_idempotency.W023" in asked.getvalue()
    assert "maxmemory-policy allkeys-lru" in asked.getvalue()


def test_the_purge_command_from_cron_does_not_warn_of_an_evicting_redis(
    evicting_server: redis_servers.Server, settings: Any
) -> None:
    """Its system checks are given no databases: they reach no server, and
    print nothing that cron would mail."""
    store = use_cache(settings, f"redis://127.0.0.1:{evicting_server.port}/0")
    settings.IDEMPOTENCY = {
        "STORAGE": "django_idempotency.storage.RedisStorage",
        "STORAGE_OPTIONS": {"CACHE_ALIAS": ALIAS, "KEY_PREFIX": store.key_prefix},
    }
    out, err = StringIO(), StringIO()

    call_command("purge_idempotency_keys", skip_checks=False, stdout=out, stderr=err)

    assert out.getvalue() == "Nothing to purge: RedisStorage expires keys by itself.\n"
    assert err.getvalue() == ""


def test_the_first_claim_of_a_process_logs_that_redis_may_evict(
    evicting_server: redis_servers.Server,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    location = f"redis://127.0.0.1:{evicting_server.port}/0"
    sync_store = use_cache(settings, location)
    async_store = use_cache(settings, location)

    async def claim_twice() -> None:
        try:
            for _ in range(2):
                await async_store.aclaim(new_key(), ttl=60, lease=30)
        finally:
            await async_store.aclose()

    with caplog.at_level(logging.WARNING, logger="django_idempotency"):
        for _ in range(2):
            sync_store.claim(new_key(), ttl=60, lease=30)
        asyncio.run(claim_twice())

    warnings = [r for r in caplog.records if "maxmemory-policy allkeys-lru" in r.getMessage()]
    assert len(warnings) == 2  # once per store, not per claim
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert "noeviction" in warnings[0].getMessage()


def test_an_evicted_claim_lets_a_duplicate_run(
    evicting_server: redis_servers.Server, settings: Any
) -> None:
    """What W023 warns of, on a real Redis: memory runs out while a request
    runs, Redis evicts its claim, and a duplicate claims the key too."""
    store = use_cache(settings, f"redis://127.0.0.1:{evicting_server.port}/0")
    server = evicting_server.client()
    key = new_key()
    try:
        # Random eviction: under an LRU policy, looking whether the claim is
        # still there would keep it recently used, and so in memory.
        server.config_set("maxmemory-policy", "allkeys-random")
        server.config_set("maxmemory", int(server.info("memory")["used_memory"]) + 500_000)
        assert store.claim(key, ttl=3600, lease=600).claimed
        for batch in range(100):  # other keys fill the memory; Redis evicts
            for number in range(100):
                server.set(f"filler-{batch}-{number}", "x" * 1000)
            if not server.exists(store.redis_key(key)):
                break

        assert int(server.info("stats")["evicted_keys"]) > 0
        assert not server.exists(store.redis_key(key))
        assert store.claim(key, ttl=3600, lease=600).claimed  # the duplicate runs
    finally:
        server.config_set("maxmemory", 0)
        server.config_set("maxmemory-policy", "allkeys-lru")
        server.flushdb()
        server.close()
