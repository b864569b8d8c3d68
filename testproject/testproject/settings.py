"""Settings of the django-idempotency test and demo project.

The database is chosen with the environment variable ``IDEMPOTENCY_TEST_DATABASE``:

``sqlite`` (default)
    ``testproject/db.sqlite3``, or the path in ``IDEMPOTENCY_SQLITE_NAME``; the test
    database is a file in the temporary directory, named after the process.
``postgresql``
    PostgreSQL through psycopg 3 on ``IDEMPOTENCY_PG_HOST`` (127.0.0.1),
    ``IDEMPOTENCY_PG_PORT`` (5432) as ``IDEMPOTENCY_PG_USER`` (postgres),
    database ``IDEMPOTENCY_PG_NAME`` (idempotency), no password.
``mariadb``
    MariaDB (or MySQL) through PyMySQL on ``IDEMPOTENCY_MYSQL_HOST`` (127.0.0.1),
    ``IDEMPOTENCY_MYSQL_PORT`` (3306) as ``IDEMPOTENCY_MYSQL_USER`` (root),
    database ``IDEMPOTENCY_MYSQL_NAME`` (idempotency), no password.

``IDEMPOTENCY_TEST_DB_NAME`` sets the name of the database the test runner creates
(``TEST["NAME"]``; ``:memory:`` for SQLite's in-memory database);
``IDEMPOTENCY_DB_NAME_OVERRIDE`` replaces ``NAME`` itself, so that server processes
started by a test (gunicorn) use the exact test database. ``IDEMPOTENCY_CONN_MAX_AGE``
sets ``CONN_MAX_AGE`` (persistent connections; the benchmarks use them).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY",
    "django-insecure-testproject-only-0123456789-never-use-this-key-in-production",
)
DEBUG = _env_flag("DJANGO_DEBUG")
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get(
        "DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver"
    ).split(",")
    if host.strip()
]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django.contrib.staticfiles",
    "django_idempotency",
    "demo",
]
# The optional integrations, where installed (the core-only test run has neither).
# IDEMPOTENCY_TEST_CORE_ONLY=1 leaves them out even where they are installed.
HAS_DRF = importlib.util.find_spec("rest_framework") is not None and not _env_flag(
    "IDEMPOTENCY_TEST_CORE_ONLY"
)
HAS_SPECTACULAR = HAS_DRF and importlib.util.find_spec("drf_spectacular") is not None
HAS_NINJA = importlib.util.find_spec("ninja") is not None and not _env_flag(
    "IDEMPOTENCY_TEST_CORE_ONLY"
)
if HAS_DRF:
    INSTALLED_APPS += ["rest_framework", "rest_framework.authtoken"]
if HAS_SPECTACULAR:
    INSTALLED_APPS += ["drf_spectacular"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: it calls the views of the URLs in IDEMPOTENCY["PROTECTED_URLS"] itself.
    "django_idempotency.middleware.IdempotencyMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"
ASGI_APPLICATION = "testproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# Database ---------------------------------------------------------------------------------

DATABASE_VENDORS = ("sqlite", "postgresql", "mariadb")
TEST_DATABASE = os.environ.get("IDEMPOTENCY_TEST_DATABASE", "sqlite").strip().lower() or "sqlite"

_default_db: dict[str, Any]
if TEST_DATABASE == "sqlite":
    _default_db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("IDEMPOTENCY_SQLITE_NAME", str(BASE_DIR / "db.sqlite3")),
        # Tests get a file, not the shared in-memory database: in memory,
        # SQLite fails concurrent writers at once ("database table is locked")
        # instead of letting them wait, which is not how a real file behaves.
        "TEST": {
            "NAME": str(Path(tempfile.gettempdir()) / f"idempotency-test-{os.getpid()}.sqlite3")
        },
    }
elif TEST_DATABASE == "postgresql":
    _default_db = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("IDEMPOTENCY_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("IDEMPOTENCY_PG_PORT", "5432"),
        "USER": os.environ.get("IDEMPOTENCY_PG_USER", "postgres"),
        "PASSWORD": "",
        "NAME": os.environ.get("IDEMPOTENCY_PG_NAME", "idempotency"),
    }
elif TEST_DATABASE == "mariadb":
    # mysqlclient needs C headers and a compiler; PyMySQL is pure Python.
    import pymysql

    pymysql.install_as_MySQLdb()

    _default_db = {
        "ENGINE": "django.db.backends.mysql",
        "HOST": os.environ.get("IDEMPOTENCY_MYSQL_HOST", "127.0.0.1"),
        "PORT": os.environ.get("IDEMPOTENCY_MYSQL_PORT", "3306"),
        "USER": os.environ.get("IDEMPOTENCY_MYSQL_USER", "root"),
        "PASSWORD": "",
        "NAME": os.environ.get("IDEMPOTENCY_MYSQL_NAME", "idempotency"),
        "OPTIONS": {
            "charset": "utf8mb4",
            "isolation_level": "read committed",
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
        },
        "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
    }
else:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        f"IDEMPOTENCY_TEST_DATABASE={TEST_DATABASE!r}: "
        f"expected one of {', '.join(DATABASE_VENDORS)}"
    )

if os.environ.get("IDEMPOTENCY_TEST_DB_NAME"):
    _default_db.setdefault("TEST", {})["NAME"] = os.environ["IDEMPOTENCY_TEST_DB_NAME"]
if os.environ.get("IDEMPOTENCY_DB_NAME_OVERRIDE"):
    _default_db["NAME"] = os.environ["IDEMPOTENCY_DB_NAME_OVERRIDE"]
if TEST_DATABASE == "postgresql" and _env_flag("IDEMPOTENCY_PG_PREPARED"):
    # Server-side binding and prepared statements (psycopg prepares a
    # statement on its fifth run on a connection): what projects without a
    # transaction-mode connection pooler may turn on.
    _default_db["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 5}
if os.environ.get("IDEMPOTENCY_CONN_MAX_AGE"):
    # Persistent connections, as in production (the benchmarks set it).
    _default_db["CONN_MAX_AGE"] = int(os.environ["IDEMPOTENCY_CONN_MAX_AGE"])

DATABASES = {
    "default": _default_db,
    # The same database under a second alias: atomic mode refuses a view's
    # writes through another alias than the store's, and the tests show it.
    "secondary": {**_default_db, "TEST": {**_default_db.get("TEST", {}), "MIRROR": "default"}},
    # Where a database router sends the keys in the tests: a database of its
    # own on SQLite (two connections to one SQLite file cannot both write
    # within one request), the same database elsewhere.
    "keys": {**_default_db, "TEST": {**_default_db.get("TEST", {}), "MIRROR": "default"}},
}
if TEST_DATABASE == "sqlite":
    DATABASES["keys"] = {
        **_default_db,
        "NAME": str(BASE_DIR / "keys.sqlite3"),
        "TEST": {
            "NAME": str(Path(tempfile.gettempdir()) / f"idempotency-keys-{os.getpid()}.sqlite3")
        },
    }


# Caches: a django-redis cache for the Redis store, where django-redis is installed ---------

CACHES: dict[str, Any] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}
HAS_REDIS = importlib.util.find_spec("django_redis") is not None
if HAS_REDIS:
    CACHES["idempotency"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("IDEMPOTENCY_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# Password validation, internationalisation, static files ---------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"


# Django REST framework -----------------------------------------------------------------------

REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
}
if HAS_SPECTACULAR:
    REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "drf_spectacular.openapi.AutoSchema"


# django-idempotency: the defaults -------------------------------------------------------

IDEMPOTENCY: dict[str, Any] = {
    # What IdempotencyMiddleware protects: the demo's shop (demo/shop.py),
    # and the benchmark's views of the middleware form (demo/bench.py).
    "PROTECTED_URLS": ["shop:", "bench-middleware-minimal", "bench-middleware-typical"],
}

# IDEMPOTENCY_TEST_STORE_DB_PORT keeps keys in the same database reached through
# another port (the fault tests' proxy, which they cut and restore), so that
# the store can fail while the view's own database stays up.
if os.environ.get("IDEMPOTENCY_TEST_STORE_DB_PORT"):
    DATABASES["idempotency_store"] = {
        **_default_db,
        "HOST": "127.0.0.1",
        "PORT": os.environ["IDEMPOTENCY_TEST_STORE_DB_PORT"],
        "TEST": {"MIRROR": "default"},
    }
    if TEST_DATABASE != "sqlite":
        DATABASES["idempotency_store"]["OPTIONS"] = {
            **_default_db.get("OPTIONS", {}),
            "connect_timeout": 2,
        }
    IDEMPOTENCY["STORAGE_OPTIONS"] = {"DATABASE": "idempotency_store"}

# IDEMPOTENCY_TEST_STORE=redis keeps keys in Redis instead (the multi-process
# tests start server pools this way), under IDEMPOTENCY_TEST_REDIS_PREFIX.
if os.environ.get("IDEMPOTENCY_TEST_STORE") == "redis":
    IDEMPOTENCY["STORAGE"] = "django_idempotency.storage.RedisStorage"
    IDEMPOTENCY["STORAGE_OPTIONS"] = {
        "CACHE_ALIAS": "idempotency",
        "KEY_PREFIX": os.environ.get("IDEMPOTENCY_TEST_REDIS_PREFIX", "idempotency"),
    }


# Logging ---------------------------------------------------------------------------------

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "loggers": {},
}
if os.environ.get("IDEMPOTENCY_DEMO_LOG"):
    LOGGING["loggers"]["django_idempotency"] = {
        "handlers": ["console"],
        "level": "INFO",
        "propagate": False,
    }
