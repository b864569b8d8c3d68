"""The Redis store: records in Redis, through a django-redis cache.

Install with the ``redis`` extra. Each record is one Redis hash; every
operation on it is one Lua script run atomically by the server, so a claim,
a completion or a release is one round trip, and the lease and expiry times
come from the Redis server's clock (``TIME``), never the workers'. Redis
expires records by itself (``PEXPIRE``), so there is nothing to purge.

Every script touches one key only, so the store works on a Redis Cluster as
it does on one server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string
from django_redis import get_redis_connection
from django_redis.cache import RedisCache
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from django_idempotency.responses import StoredResponse
from django_idempotency.storage.base import BaseStorage, Claim, Record, RequestKey, StorageError

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

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
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] or redis.call('HGET', KEYS[1], 's') ~= 'p' then
  return 0
end
redis.call('HSET', KEYS[1], 's', 'c', 'st', ARGV[2], 'h', ARGV[3], 'b', ARGV[4], 'r', ARGV[5])
redis.call('HDEL', KEYS[1], 'l')
return 1
"""

RELEASE = """
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] or redis.call('HGET', KEYS[1], 's') ~= 'p' then
  return 0
end
return redis.call('DEL', KEYS[1])
"""

_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (CLAIM, COMPLETE, RELEASE)}


# What a store that is down, slow or full raises; the store answers StorageError.
# (This module is imported only when RedisStorage is used: see storage/__init__.py.)
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


class RedisStorage(BaseStorage):
    """Keeps records in Redis, through the django-redis cache ``cache_alias``.

    ``key_prefix`` starts every Redis key (``idempotency:{<digest>}``; the
    braces make the digest the Cluster hash tag). Sync views use the cache's
    own client; async views use redis-py's asyncio client, built from the
    same ``LOCATION`` and the cache's ``PASSWORD``, ``SOCKET_TIMEOUT`` and
    ``SOCKET_CONNECT_TIMEOUT`` options, one per event loop.

    ``cluster=True`` is for a Redis Cluster, which django-redis's clients do
    not speak: the store then builds redis-py's ``RedisCluster`` clients (sync
    and asyncio) from the cache's ``LOCATION`` (any node) and the same options.
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

    def redis_key(self, key: RequestKey) -> str:
        return f"{self.key_prefix}:{{{key.digest}}}"

    # -- the contract ----------------------------------------------------------

    def claim(self, key: RequestKey, *, ttl: float, lease: float) -> Claim:
        token = _token()
        reply = self._run(CLAIM, key, token, key.fingerprint, _ms(ttl), _ms(lease))
        return _claim(reply, token)

    def complete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        return bool(self._run(COMPLETE, key, token, *_response_args(response)))

    def release(self, key: RequestKey, token: str) -> bool:
        return bool(self._run(RELEASE, key, token))

    async def aclaim(self, key: RequestKey, *, ttl: float, lease: float) -> Claim:
        token = _token()
        reply = await self._arun(CLAIM, key, token, key.fingerprint, _ms(ttl), _ms(lease))
        return _claim(reply, token)

    async def acomplete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        return bool(await self._arun(COMPLETE, key, token, *_response_args(response)))

    async def arelease(self, key: RequestKey, token: str) -> bool:
        return bool(await self._arun(RELEASE, key, token))

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
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
        return []

    # -- clients ---------------------------------------------------------------

    def client(self) -> Redis:
        """The sync client: the django-redis cache's own, or, with
        ``cluster=True``, a ``RedisCluster`` built from the cache's settings."""
        if self.cluster:
            if self._cluster_client is None:
                from redis.cluster import RedisCluster

                url, options = self._connection_settings()
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
        """
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(loop)
        if entry is None:
            client = self._new_async_client()
            closer = self._close_with_loop(loop, client)
            await closer.__anext__()
            # The entry holds the closer: asyncio finalises unfinished async
            # generators when the loop shuts down (asyncio.run does), which
            # closes the client and forgets the loop.
            entry = self._async_clients[loop] = (client, closer)
        return entry[0]

    async def _close_with_loop(
        self, loop: asyncio.AbstractEventLoop, client: AsyncRedis
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self._async_clients.pop(loop, None)
            await client.aclose()

    def _new_async_client(self) -> AsyncRedis:
        url, options = self._connection_settings()
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

            cluster: AsyncRedis = AsyncRedisCluster.from_url(url, **options)  # type: ignore[assignment]
            return cluster
        from redis.asyncio import Redis as AsyncRedis

        return AsyncRedis.from_url(url, **options)

    def _connection_settings(self) -> tuple[str, dict[str, Any]]:
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
            return _evalsha(client, script, self.redis_key(key), args)
        except REDIS_ERRORS as exc:
            raise StorageError(f"Redis: {exc}") from exc

    async def _arun(self, script: str, key: RequestKey, *args: Any) -> Any:
        redis_key = self.redis_key(key)
        try:
            client = await self.async_client()
            try:
                return await client.evalsha(_SHA[script], 1, redis_key, *args)
            except NoScriptError:
                return await client.eval(script, 1, redis_key, *args)
        except REDIS_ERRORS as exc:
            raise StorageError(f"Redis: {exc}") from exc


def _evalsha(client: Redis, script: str, redis_key: str, args: tuple[Any, ...]) -> Any:
    try:
        return client.evalsha(_SHA[script], 1, redis_key, *args)
    except NoScriptError:  # the first call on this server, or after a restart
        return client.eval(script, 1, redis_key, *args)


def _token() -> str:
    return uuid.uuid4().hex


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
