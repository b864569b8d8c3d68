"""Shared fixtures: views served under a URLconf made per test, a database
alias that is really down, the database vendor under test, gates that hold a
view's first run, and the closing of the connections async tests open."""

from __future__ import annotations

import copy
import inspect
import sys
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.urls import clear_url_caches, path
from helpers import AsyncGate, Gate

from django_idempotency import conf

URLCONF = "idempotency_test_urls"


@pytest.fixture
def serve(settings: Any) -> Iterator[Callable[..., str]]:
    """``serve(view, route="endpoint/")`` mounts ``view`` and returns its URL.

    Views are served through Django's whole request handling (URL resolution,
    middleware), so ``request.resolver_match`` and the default scope are real.
    """
    module = types.ModuleType(URLCONF)
    module.urlpatterns = []  # type: ignore[attr-defined]
    sys.modules[URLCONF] = module
    settings.ROOT_URLCONF = URLCONF

    def mount(view: Callable[..., Any], route: str = "endpoint/") -> str:
        module.urlpatterns.append(path(route, view))  # type: ignore[attr-defined]
        clear_url_caches()
        return "/" + route

    yield mount
    del sys.modules[URLCONF]
    clear_url_caches()


@pytest.fixture
def idempotency_settings(settings: Any) -> Callable[..., None]:
    """``idempotency_settings(TTL=5, ...)`` sets ``IDEMPOTENCY`` for one test."""

    def update(**values: Any) -> None:
        settings.IDEMPOTENCY = {**getattr(settings, "IDEMPOTENCY", {}), **values}

    return update


@pytest.fixture(autouse=True)
def _fresh_configuration() -> Iterator[None]:
    # Stores built from settings are cached; every test starts without them.
    conf._reset_cache(setting=conf.SETTINGS_NAME)
    yield
    conf._reset_cache(setting=conf.SETTINGS_NAME)


@pytest.fixture
def db_vendor() -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB): the database under test."""
    return connection.vendor


@pytest.fixture
def down_database(django_db_blocker: Any) -> Iterator[str]:
    """The alias of a database that cannot be reached: the same engine as
    ``default``, pointed at a closed port (or, for SQLite, a file in a
    directory that does not exist). Every query on it fails as it does when
    the real database is down.

    Tests using it take no ``django_db`` mark: they need no test database,
    and database access is unblocked for them by this fixture.
    """
    alias = "idempotency_down"
    dead = copy.deepcopy(connections.settings["default"])
    if dead["ENGINE"].endswith("sqlite3"):
        dead["NAME"] = "/nonexistent-directory/idempotency.sqlite3"
    else:
        dead["HOST"], dead["PORT"] = "127.0.0.1", "9"  # the discard port: closed
        dead["OPTIONS"] = {**dead.get("OPTIONS", {}), "connect_timeout": 2}
    connections.settings[alias] = dead
    with django_db_blocker.unblock():
        yield alias
    for conn in connections.all(initialized_only=True):
        if conn.alias == alias:
            conn.close()
    if hasattr(connections._connections, alias):
        delattr(connections._connections, alias)
    del connections.settings[alias]


@pytest.fixture
def gate(request: pytest.FixtureRequest) -> Iterator[Gate | AsyncGate]:
    """Holds the first run of a view until the test sets ``gate.release``: an
    :class:`~helpers.AsyncGate` on the event loop for an async test, a
    :class:`~helpers.Gate` in the view's thread otherwise. Released at the end
    whatever happens, so no request is left waiting."""
    held = AsyncGate() if inspect.iscoroutinefunction(request.function) else Gate()
    yield held
    held.release.set()


@pytest.fixture
async def close_orm_thread_connections() -> AsyncIterator[None]:
    """Close, after an async test, the connections opened in asgiref's worker
    thread, where async code reaches the ORM: they outlive the test otherwise
    and would keep the test database from being dropped at the end of the run."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def redis_store() -> Iterator[Any]:
    """A ``RedisStorage`` on the test Redis (the ``idempotency`` cache) with a
    key prefix of its own, so tests never see each other's records; its keys
    are deleted afterwards. Skips where the ``redis`` extra is not installed."""
    pytest.importorskip("django_redis", reason="the redis extra is not installed")
    from django_idempotency.storage import RedisStorage

    store = RedisStorage(cache_alias="idempotency", key_prefix=f"test-{uuid.uuid4().hex}")
    yield store
    client = store.client()
    for redis_key in client.scan_iter(match=f"{store.key_prefix}:*"):
        client.delete(redis_key)


@pytest.fixture(params=["database", "redis"])
def store(request: pytest.FixtureRequest) -> Any:
    """The database store, then the Redis store (the ``redis_store`` fixture):
    a test that takes it runs once on each. Modules with stores of their own
    define a ``store`` fixture that replaces this one."""
    if request.param == "database":
        from django_idempotency.storage import DatabaseStorage

        return DatabaseStorage()
    return request.getfixturevalue("redis_store")
