"""Shared fixtures: the servers of the run (the machine's own or throwaway
ones, see :mod:`services`), views served under a URLconf made per test, a
database alias that is really down, the database vendor under test, gates that
hold a view's first run, and the closing of the connections async tests open."""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import sys
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
import services
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.db import connection, connections
from django.urls import clear_url_caches, path
from helpers import AsyncGate, Gate

import django_idempotency
from django_idempotency import conf, signals

URLCONF = "idempotency_test_urls"

DATABASE_SERVICES = {"postgresql": "postgresql", "mariadb": "mariadb"}


# The run's servers --------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # The benchmark views' Redis keys, apart for each test process (demo/bench.py).
    os.environ["IDEMPOTENCY_BENCH_REDIS_PREFIX"] = f"bench-test-{os.getpid()}"
    try:
        required = services.required()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    package = Path(django_idempotency.__file__).resolve()
    if os.environ.get("IDEMPOTENCY_TEST_INSTALLED") and package.is_relative_to(
        config.rootpath / "django_idempotency"
    ):
        raise pytest.UsageError(
            f"IDEMPOTENCY_TEST_INSTALLED is set, but django_idempotency is imported from the "
            f"source tree ({package}), not from an installed package"
        )
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller has checked
    missing = [
        services.address(name)
        for name in sorted(required)
        if not services.answers(services.address(name))
    ]
    if missing:
        raise pytest.UsageError(
            "required service(s) missing ("
            + services.REQUIRE_VARIABLE
            + "): "
            + ", ".join(f"{s.name} does not answer on {s}" for s in missing)
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    database = django_settings.TEST_DATABASE
    lines = [
        f"django_idempotency {django_idempotency.__version__} from "
        f"{Path(django_idempotency.__file__).parent}",
        f"Django {django.get_version()}, database {database}",
    ]
    for name in ("postgresql", "mariadb", "redis"):
        if name in DATABASE_SERVICES and DATABASE_SERVICES[name] != database:
            continue
        where = services.address(name)
        if services.answers(where):
            lines.append(f"{name}: the machine's, on {where}")
        elif name == "mariadb":
            lines.append(f"{name}: MISSING on {where}: its tests are skipped")
        else:
            lines.append(f"{name}: nothing on {where}: a throwaway server per test process")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if django_settings.TEST_DATABASE != "mariadb":
        return
    where = services.mariadb_address()
    if services.answers(where):
        return
    skip = pytest.mark.skip(
        reason=f"MariaDB does not answer on {where} (IDEMPOTENCY_MYSQL_HOST/PORT); "
        "no throwaway MariaDB exists, so its tests are not run"
    )
    for item in items:
        item.add_marker(skip)


@contextlib.contextmanager
def _pointed_at(
    variables: dict[str, str], entries: list[dict[str, Any]], values: dict[str, Any]
) -> Iterator[None]:
    """Point settings ``entries`` (``values``) and the environment (``variables``,
    read by the server processes tests start) at a throwaway server."""
    saved_env = {name: os.environ.get(name) for name in variables}
    saved = [{key: entry.get(key) for key in values} for entry in entries]
    os.environ.update(variables)
    for entry in entries:
        entry.update(values)
    try:
        yield
    finally:
        for entry, old in zip(entries, saved, strict=True):
            entry.update(old)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def _postgresql_server() -> Iterator[None]:
    """The machine's PostgreSQL, or a throwaway one where it has none."""
    if django_settings.TEST_DATABASE != "postgresql" or services.answers(
        services.postgresql_address()
    ):
        yield
        return
    original = services.postgresql_address()
    entries = [
        entry
        for entry in django_settings.DATABASES.values()
        if (entry.get("HOST"), str(entry.get("PORT"))) == (original.host, str(original.port))
    ]
    with (
        services.embedded_postgresql() as server,
        _pointed_at(
            {"IDEMPOTENCY_PG_HOST": server.host, "IDEMPOTENCY_PG_PORT": str(server.port)},
            entries,
            {"HOST": server.host, "PORT": str(server.port), "USER": "postgres"},
        ),
    ):
        yield


@pytest.fixture(scope="session", autouse=True)
def _redis_server() -> Iterator[None]:
    """The machine's Redis, or a throwaway one where it has none."""
    cache = django_settings.CACHES.get("idempotency")
    if cache is None or services.answers(services.redis_address()):
        yield
        return
    with services.embedded_redis() as server:
        url = f"redis://{server}/0"
        with _pointed_at({"IDEMPOTENCY_REDIS_URL": url}, [cache], {"LOCATION": url}):
            yield


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, _postgresql_server: None
) -> None:
    """pytest-django's hook on the database settings, before the test
    databases are created: after the throwaway PostgreSQL, if any, is up."""


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's test databases, whose flushes skip the permissions.

    A transactional test (``django_db(transaction=True)``) ends with a flush
    of every table, after which Django recreates the auth permissions of
    every model: more than half of the time the flush takes, and nothing in
    the suite reads a permission row (superusers need none). The test
    databases are created with them; flushes no longer recreate them."""
    from django.contrib.auth.management import create_permissions
    from django.db.models.signals import post_migrate

    uid = "django.contrib.auth.management.create_permissions"
    post_migrate.disconnect(create_permissions, dispatch_uid=uid)
    yield
    post_migrate.connect(create_permissions, dispatch_uid=uid)


# Views, settings and databases of a test ------------------------------------------------------


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
def uses(store: Any, idempotency_settings: Callable[..., None]) -> Any:
    """Every protection in the test keeps its keys in ``store`` (the
    ``STORAGE`` setting): the database store, then the Redis store."""
    idempotency_settings(STORAGE=store)
    return store


@pytest.fixture
def atomic_requests() -> Iterator[None]:
    """ATOMIC_REQUESTS on the default database, for one test (in place:
    Django reads it from the connection's settings)."""
    entries = (connections.settings["default"], connection.settings_dict)
    saved = [entry["ATOMIC_REQUESTS"] for entry in entries]
    for entry in entries:
        entry["ATOMIC_REQUESTS"] = True
    yield
    for entry, was in zip(entries, saved, strict=True):
        entry["ATOMIC_REQUESTS"] = was


@pytest.fixture
def claimed() -> Iterator[list[Any]]:
    """The keys claimed during the test, in order."""
    keys: list[Any] = []

    def record(sender: Any, **kwargs: Any) -> None:
        keys.append(kwargs["key"])

    signals.key_claimed.connect(record)
    yield keys
    signals.key_claimed.disconnect(record)


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
