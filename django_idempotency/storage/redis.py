"""The Redis store: records in Redis, through a django-redis cache.

Install with the ``redis`` extra. Each record is one Redis hash; every
operation on it is one Lua script run atomically by the server, so a claim,
a completion or a release is one round trip, and the lease and expiry times
come from the Redis server's clock (``TIME``), never the workers'. Redis
expires records by itself (``PEXPIRE``), so there is nothing to purge.

Every script touches one key only, so the store works on a Redis Cluster as
it does on one server.

Async views use redis-py's asyncio client, the twin of the cache's sync
client: built from the connection pool django-redis made for the cache (its
URL, credentials, timeouts, TLS, ``CONNECTION_POOL_KWARGS``, Sentinel), so
that both connect alike. Where no twin can honour that configuration, async
views run the sync client in worker threads instead (check ``W022``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django_redis import get_redis_connection
from django_redis.cache import RedisCache
from redis import Redis
from redis import connection as sync_connection
from redis import sentinel as sync_sentinel
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio import connection as async_connection
from redis.asyncio import sentinel as async_sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from django_idempotency.records import Claim, Record, RequestKey, StoredResponse
from django_idempotency.storage.base import (
    BaseStorage,
    StorageError,
    new_token,
)

# The record is a hash: s state ("p" in progress, "c" completed), o owner
# token, f fingerprint, l lease end (server milliseconds), then, once
# completed, st status, h headers (JSON), b body, r replayable ("1"/"0").
_CLOCK = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

CLAIM = (
    _CLOCK
    + """
local rec = redis.call('HMGET', KEYS[1], 's', 'f', 'l', 'st', 'h', 'b', 'r')
local take = not rec[1]
if rec[1] == 'p' and tonumber(rec[3]) <= now and rec[2] == ARGV[2] then
  take = true
end
if take then
  -- HSET first: a full Redis (maxmemory, noeviction) refuses it, and so
  -- the claim, before the view runs. A record taken over holds s/o/f/l only.
  redis.call('HSET', KEYS[1], 's', 'p', 'o', ARGV[1], 'f', ARGV[2], 'l', now + tonumber(ARGV[4]))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1}
end
return {0, rec[1], rec[2], rec[4] or '', rec[5] or '', rec[6] or '', rec[7] or ''}
"""
)

COMPLETE = """
local rec = redis.call('HMGET', KEYS[1], 'o', 's')
if rec[1] ~= ARGV[1] then
  return 0
end
if rec[2] == 'c' then
  return 1  -- completed by this token already: a retry after a lost reply
end
redis.call('HSET', KEYS[1], 's', 'c', 'st', ARGV[2], 'h', ARGV[3], 'b', ARGV[4], 'r', ARGV[5])
redis.call('HDEL', KEYS[1], 'l')
return 1
"""

RENEW = (
    _CLOCK
    + """
local rec = redis.call('HMGET', KEYS[1], 'o', 's')
if rec[1] ~= ARGV[1] or rec[2] ~= 'p' then
  return 0
end
redis.call('HSET', KEYS[1], 'l', now + tonumber(ARGV[2]))
return 1
"""
)

RELEASE = """
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] or redis.call('HGET', KEYS[1], 's') ~= 'p' then
  return 0
end
return redis.call('DEL', KEYS[1])
"""

# What a store that is down, slow or full raises; the store answers StorageError.
# (This module is imported only when RedisStorage is used: see storage/__init__.py.)
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)

logger = logging.getLogger("django_idempotency")


class RedisStorage(BaseStorage):
    """Keeps records in Redis, through the django-redis cache ``cache_alias``.

    ``key_prefix`` starts every Redis key (``idempotency:{<digest>}``; the
    braces make the digest the Cluster hash tag). Sync views use the cache's
    own client; async views use redis-py's asyncio client, one per event
    loop, the twin of the cache's client (:func:`_async_twin`); where there
    can be none, async views run the sync client in worker threads.

    ``cluster=True`` is for a Redis Cluster, which django-redis's clients do
    not speak: the store then builds redis-py's ``RedisCluster`` clients (sync
    and asyncio) from the cache's ``LOCATION`` (any node), ``PASSWORD``,
    ``SOCKET_TIMEOUT`` and ``SOCKET_CONNECT_TIMEOUT``.
    """

    def __init__(
        self,
        *,
        cache_alias: str = "default",
        key_prefix: str = "idempotency",
        cluster: bool = False,
    ) -> None:
        self.cache_alias = cache_alias
        self.key_prefix = key_prefix
        self.cluster = cluster
        self._cluster_client: Redis | None = None
        self._async_clients: dict[
            asyncio.AbstractEventLoop, tuple[AsyncRedis, AsyncGenerator[None, None]]
        ] = {}
        self._twin_problem: str | None = None
        self._twin_known = False
        self._eviction_looked_at = False
        self._scripts: dict[tuple[str, bool], Any] = {}

    def redis_key(self, key: RequestKey) -> str:
        return f"{self.key_prefix}:{{{key.digest}}}"

    # -- the contract ----------------------------------------------------------

    def claim(self, key: RequestKey, *, ttl: float, lease: float) -> Claim:
        token = new_token()
        reply = self._run(CLAIM, key, token, key.fingerprint, _ms(ttl), _ms(lease))
        return _claim(reply, token)

    def complete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        return bool(self._run(COMPLETE, key, token, *_response_args(response)))

    def renew(self, key: RequestKey, token: str, *, lease: float) -> bool:
        return bool(self._run(RENEW, key, token, _ms(lease)))

    def release(self, key: RequestKey, token: str) -> bool:
        return bool(self._run(RELEASE, key, token))

    async def aclaim(self, key: RequestKey, *, ttl: float, lease: float) -> Claim:
        token = new_token()
        reply = await self._arun(CLAIM, key, token, key.fingerprint, _ms(ttl), _ms(lease))
        return _claim(reply, token)

    async def acomplete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        return bool(await self._arun(COMPLETE, key, token, *_response_args(response)))

    async def arelease(self, key: RequestKey, token: str) -> bool:
        return bool(await self._arun(RELEASE, key, token))

    def check(
        self, *, databases: Sequence[str] | None = None, servers_only: bool = False, **kwargs: Any
    ) -> list[checks.CheckMessage]:
        """E020, E021 and E022 about the cache, W022 about async views; and,
        when Django's checks are given databases (``check --database``,
        ``migrate``), W023 about eviction: the only check that reaches Redis."""
        if servers_only:
            if not databases:
                return []
            try:
                return self._eviction_check()
            except Exception:  # no Redis client: E020, E021 or E022, reported offline
                return []
        config = settings.CACHES.get(self.cache_alias)
        if config is None:
            return [
                checks.Error(
                    f"The idempotency storage uses the cache {self.cache_alias!r}, "
                    "which is not in CACHES.",
                    hint="Add a django-redis cache to CACHES, or set "
                    "IDEMPOTENCY['STORAGE_OPTIONS']['CACHE_ALIAS'].",
                    id="django_idempotency.E020",
                )
            ]
        try:
            backend = import_string(config.get("BACKEND", ""))
        except ImportError:
            backend = None
        if not (isinstance(backend, type) and issubclass(backend, RedisCache)):
            return [
                checks.Error(
                    f"The cache {self.cache_alias!r} is not a django-redis cache "
                    f"({config.get('BACKEND')}).",
                    hint="Use BACKEND 'django_redis.cache.RedisCache' for that cache.",
                    id="django_idempotency.E021",
                )
            ]
        messages: list[checks.CheckMessage] = []
        if not self.cluster:  # a RedisCluster client connects when it is built
            try:
                problem = self._async_twin_problem()
            except Exception as exc:  # whatever django-redis raises, sync views get it too
                return [
                    checks.Error(
                        f"The cache {self.cache_alias!r} gives no Redis client: "
                        f"{type(exc).__name__}: {exc}",
                        hint="The store takes django-redis's client of the cache "
                        "(get_redis_connection): use its DefaultClient, HerdClient or "
                        "SentinelClient, not ShardClient, and OPTIONS that django-redis "
                        "accepts.",
                        id="django_idempotency.E022",
                    )
                ]
            if problem is not None:
                messages.append(
                    checks.Warning(
                        f"Async views reach the cache {self.cache_alias!r} through its "
                        f"sync client, in worker threads: {problem}.",
                        hint="That works, with a thread per Redis call in flight. For "
                        "redis-py's asyncio client, keep to the connection classes, pool "
                        "classes and options that redis-py has in both versions; or "
                        "silence django_idempotency.W022.",
                        id="django_idempotency.W022",
                    )
                )
        if databases:
            messages.extend(self._eviction_check())
        return messages

    # -- clients ---------------------------------------------------------------

    def client(self) -> Redis:
        """The sync client: the django-redis cache's own, or, with
        ``cluster=True``, a ``RedisCluster`` built from the cache's settings."""
        if self.cluster:
            if self._cluster_client is None:
                from redis.cluster import RedisCluster

                url, options = self._cluster_settings()
                self._cluster_client = RedisCluster.from_url(url, **options)  # type: ignore[assignment]
            assert self._cluster_client is not None
            return self._cluster_client
        client: Redis = get_redis_connection(self.cache_alias)
        return client

    async def async_client(self) -> AsyncRedis:
        """The asyncio client of the running event loop (``Redis``, or
        ``RedisCluster`` with ``cluster=True``), built on first use.

        It is closed when its event loop shuts down: an async view served by
        WSGI runs in an event loop of its own that ends with the request.
        Raise ``ImproperlyConfigured`` where no asyncio client can connect as
        the cache's does (check ``W022``).
        """
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(loop)
        if entry is None:
            client, others = self._new_async_client()
            closer = self._close_with_loop(loop, [client, *others])
            await closer.__anext__()
            # The entry holds the closer: asyncio finalises unfinished async
            # generators when the loop shuts down (asyncio.run does), which
            # closes the client and forgets the loop.
            entry = self._async_clients[loop] = (client, closer)
        return entry[0]

    async def _close_with_loop(
        self, loop: asyncio.AbstractEventLoop, clients: list[AsyncRedis]
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self._async_clients.pop(loop, None)
            for client in clients:
                await client.aclose()

    def _new_async_client(self) -> tuple[AsyncRedis, list[AsyncRedis]]:
        """The asyncio client, and the clients of its Sentinels, to close with it."""
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

            url, options = self._cluster_settings()
            cluster: AsyncRedis = AsyncRedisCluster.from_url(url, **options)  # type: ignore[assignment]
            return cluster, []
        return _async_twin(self.client(), settings.CACHES[self.cache_alias].get("OPTIONS", {}))

    def _async_twin_problem(self) -> str | None:
        """Why no asyncio client can connect as the cache's sync client does
        (async views then run the sync client in worker threads), or None.
        Found out once, by building a twin: nothing connects."""
        if self.cluster:
            return None
        if not self._twin_known:
            try:
                self._new_async_client()
            except _NoTwin as exc:
                self._twin_problem = str(exc)
            self._twin_known = True
        return self._twin_problem

    def _cluster_settings(self) -> tuple[str, dict[str, Any]]:
        """The first URL of the cache's ``LOCATION``, and its password and timeouts."""
        config = settings.CACHES[self.cache_alias]
        location = config["LOCATION"]
        url = location[0] if isinstance(location, list | tuple) else location
        options = config.get("OPTIONS", {})
        return str(url).split(",")[0], {
            "password": options.get("PASSWORD"),
            "socket_timeout": options.get("SOCKET_TIMEOUT"),
            "socket_connect_timeout": options.get("SOCKET_CONNECT_TIMEOUT"),
        }

    async def aclose(self) -> None:
        """Close the asyncio client of the running event loop, if any: for an
        event loop that ends before the process does (tests, scripts)."""
        entry = self._async_clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()  # runs the closer's finally: closes the client

    def _run(self, script: str, key: RequestKey, *args: Any) -> Any:
        try:
            client = self.client()
            if script is CLAIM and self._first_claim():
                with contextlib.suppress(*REDIS_ERRORS):
                    self._log_eviction(client.info("memory"))
            return self._script(script, client)([self.redis_key(key)], args, client)
        except REDIS_ERRORS as exc:
            raise StorageError(f"Redis: {exc}") from exc

    async def _arun(self, script: str, key: RequestKey, *args: Any) -> Any:
        if self._async_twin_problem() is not None:
            return await sync_to_async(self._run, thread_sensitive=False)(script, key, *args)
        redis_key = self.redis_key(key)
        try:
            client = await self.async_client()
            if script is CLAIM and self._first_claim():
                with contextlib.suppress(*REDIS_ERRORS):
                    self._log_eviction(await client.info("memory"))
            return await self._script(script, client, asynchronous=True)([redis_key], args, client)
        except REDIS_ERRORS as exc:
            raise StorageError(f"Redis: {exc}") from exc

    def _script(self, script: str, client: Any, *, asynchronous: bool = False) -> Any:
        """redis-py's ``Script`` of ``script`` for sync or asyncio clients,
        made once per store: ``EVALSHA``, and where the server does not know
        the script yet (its first call, or after a restart), ``SCRIPT LOAD``
        and ``EVALSHA`` again."""
        runner = self._scripts.get((script, asynchronous))
        if runner is None:
            runner = self._scripts[script, asynchronous] = client.register_script(script)
        return runner

    # -- eviction --------------------------------------------------------------

    def _first_claim(self) -> bool:
        """True once per store (and so per process): the claim that looks at
        whether Redis may evict records (``INFO memory``) before it runs."""
        first, self._eviction_looked_at = not self._eviction_looked_at, True
        return first

    def _log_eviction(self, info: Mapping[str, Any]) -> None:
        problem = _eviction_problem(self.cache_alias, info)
        if problem is not None:
            logger.warning("%s %s", problem, EVICTION_FIX)

    def _eviction_check(self) -> list[checks.CheckMessage]:
        try:
            info = self.client().info("memory")
        except REDIS_ERRORS:
            return []  # Redis unreachable, or INFO not allowed: the first claim looks again
        problem = _eviction_problem(self.cache_alias, info)
        if problem is None:
            return []
        return [checks.Warning(problem, hint=EVICTION_FIX, id="django_idempotency.W023")]


EVICTION_FIX = (
    "Set maxmemory-policy to noeviction on that Redis (redis.conf, CONFIG SET, or the "
    "parameter group of a managed Redis), or keep the keys in a Redis of their own that "
    "has it."
)


def _eviction_problem(cache_alias: str, info: Mapping[str, Any]) -> str | None:
    """What ``INFO memory`` (of one server, or of each node of a Cluster)
    says about evicting records, if it may: any policy but ``noeviction``,
    since every record has a TTL and so ``volatile-*`` evicts records too."""
    policies = sorted(_policies(info) - {"noeviction"})
    if not policies:
        return None
    return (
        f"The Redis of the cache {cache_alias!r} may evict idempotency records "
        f"(maxmemory-policy {', '.join(policies)}): a record evicted before its TTL is "
        "forgotten, and a retry of its request, or a duplicate of a request still "
        "running, runs the view again."
    )


def _policies(info: Mapping[str, Any]) -> set[str]:
    if "maxmemory_policy" in info:
        return {_text(info["maxmemory_policy"])}
    return {
        policy for node in info.values() if isinstance(node, Mapping) for policy in _policies(node)
    }


# -- the asyncio twin of django-redis's client -----------------------------------------


class _NoTwin(ImproperlyConfigured):
    """No asyncio client can connect as the cache's sync client does; says why."""


# redis-py's sync classes and their asyncio versions. Other classes (custom
# ones, or ones without an asyncio version) have no twin: async views then
# run the sync client in worker threads.
_TWIN_POOLS: dict[type[Any], type[Any]] = {
    sync_connection.ConnectionPool: async_connection.ConnectionPool,
    sync_connection.BlockingConnectionPool: async_connection.BlockingConnectionPool,
    sync_sentinel.SentinelConnectionPool: async_sentinel.SentinelConnectionPool,
}
_TWIN_CONNECTIONS: dict[type[Any], type[Any]] = {
    sync_connection.Connection: async_connection.Connection,
    sync_connection.SSLConnection: async_connection.SSLConnection,
    sync_connection.UnixDomainSocketConnection: async_connection.UnixDomainSocketConnection,
    sync_sentinel.SentinelManagedConnection: async_sentinel.SentinelManagedConnection,
    sync_sentinel.SentinelManagedSSLConnection: async_sentinel.SentinelManagedSSLConnection,
}


def _async_twin(client: Redis, options: Mapping[str, Any]) -> tuple[AsyncRedis, list[AsyncRedis]]:
    """The asyncio client that connects as django-redis's sync ``client`` does,
    and the clients of its Sentinels; nothing connects yet.

    It is built from the connection pool django-redis made for the cache, so
    whatever django-redis and redis-py made of ``LOCATION`` (``rediss://``,
    credentials, database), ``USERNAME``, ``PASSWORD``, the timeouts,
    ``CONNECTION_POOL_KWARGS`` and ``CONNECTION_POOL_CLASS`` applies alike; a
    Sentinel pool gets an asyncio Sentinel with the same Sentinels and
    ``SENTINEL_KWARGS``. Raise :class:`_NoTwin` where redis-py has no asyncio
    version of a class, or its asyncio class does not take an option.
    """
    if type(client) is not Redis:
        raise _NoTwin(
            f"the client class {_name(type(client))} (REDIS_CLIENT_CLASS) is not redis-py's"
        )
    if options.get("REDIS_CLIENT_KWARGS"):
        raise _NoTwin("OPTIONS['REDIS_CLIENT_KWARGS'] are for the sync client class")
    pool = client.connection_pool
    pool_class = _TWIN_POOLS.get(type(pool))
    if pool_class is None:
        raise _NoTwin(f"the connection pool class {_name(type(pool))} has no asyncio version")
    connection_class = _TWIN_CONNECTIONS.get(pool.connection_class)
    if connection_class is None:
        raise _NoTwin(f"the connection class {_name(pool.connection_class)} has no asyncio version")
    kwargs = _twin_options(pool.connection_kwargs)
    kwargs.update(connection_class=connection_class, max_connections=pool.max_connections)
    sentinels: list[AsyncRedis] = []
    try:
        if isinstance(pool, sync_sentinel.SentinelConnectionPool):
            manager = _twin_sentinel(pool.sentinel_manager)
            sentinels = list(manager.sentinels)
            twin = pool_class(
                pool.service_name,
                manager,
                is_master=pool.is_master,
                check_connection=pool.check_connection,
                **kwargs,
            )
        else:
            if isinstance(pool, sync_connection.BlockingConnectionPool):
                kwargs["timeout"] = pool.timeout
            twin = pool_class(**kwargs)
        twin.make_connection()  # its options, checked by the connection class; no I/O
    except TypeError as exc:
        raise _NoTwin(f"redis-py's asyncio classes do not take its options ({exc})") from exc
    return AsyncRedis.from_pool(twin), sentinels


def _twin_sentinel(manager: sync_sentinel.Sentinel) -> async_sentinel.Sentinel:
    addresses = [
        (
            sentinel.connection_pool.connection_kwargs["host"],
            sentinel.connection_pool.connection_kwargs["port"],
        )
        for sentinel in manager.sentinels
    ]
    return async_sentinel.Sentinel(  # type: ignore[no-untyped-call]
        addresses,
        min_other_sentinels=manager.min_other_sentinels,
        sentinel_kwargs=_twin_options(manager.sentinel_kwargs),
        force_master_ip=getattr(manager, "_force_master_ip", None),
    )


def _twin_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A sync pool's connection options for redis-py's asyncio classes: the
    sync parser dropped (the asyncio client picks its own), the Sentinel
    pool's reference to itself dropped, a ``Retry`` remade for asyncio."""
    twin = {name: value for name, value in options.items() if name not in _NOT_TWINNED}
    retry = twin.get("retry")
    if isinstance(retry, Retry):
        errors = cast("tuple[type[RedisError], ...]", retry._supported_errors)
        twin["retry"] = AsyncRetry(retry._backoff, retry._retries, errors)
    return twin


_NOT_TWINNED = frozenset({"parser_class", "connection_pool"})


def _name(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _response_args(response: StoredResponse) -> tuple[Any, ...]:
    headers = json.dumps([list(pair) for pair in response.headers], separators=(",", ":"))
    return response.status, headers, response.body, "1" if response.replayable else "0"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _claim(reply: list[Any], token: str) -> Claim:
    if int(reply[0]) == 1:
        return Claim(token=token)
    state, fingerprint, status, headers, body, replayable = reply[1:7]
    if _text(state) != "c":
        return Claim(record=Record(state="in_progress", fingerprint=_text(fingerprint)))
    response = StoredResponse(
        status=int(status),
        headers=tuple((name, value) for name, value in json.loads(_text(headers) or "[]")),
        body=body if isinstance(body, bytes) else str(body).encode(),
        replayable=_text(replayable) == "1",
    )
    return Claim(
        record=Record(state="completed", fingerprint=_text(fingerprint), response=response)
    )
