"""System checks of the ``IDEMPOTENCY`` setting and of the configured store."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.checks import CheckMessage, Error, Tags, run_checks
from django.core.checks import Warning as CheckWarning
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections
from helpers import RUNS_SYSTEM_CHECKS

from django_idempotency import checks
from django_idempotency.storage import BaseStorage, DatabaseStorage


def _ids(messages: list[CheckMessage]) -> list[str]:
    return [message.id for message in messages if message.id]


def _ours(messages: list[CheckMessage]) -> list[CheckMessage]:
    return [m for m in messages if (m.id or "").startswith("django_idempotency.")]


def _run_checks() -> list[CheckMessage]:
    return _ours(run_checks(tags=[Tags.compatibility]))


@pytest.fixture
def atomic_alias() -> Iterator[str]:
    """``secondary``, the default database under a second alias, with
    ATOMIC_REQUESTS on for the test.

    Its entry of the DATABASES dict is changed in place, as overriding
    DATABASES is not supported. An alias of the settings, not one the test
    adds: the check command connects to every alias from Django 6.1 on, and
    a test may only connect to the aliases that exist when it starts.
    """
    alias = "secondary"
    entry = connections.settings[alias]
    was = entry["ATOMIC_REQUESTS"]
    entry["ATOMIC_REQUESTS"] = True
    try:
        yield alias
    finally:
        entry["ATOMIC_REQUESTS"] = was


# -- valid configurations ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"TTL": 3600, "LOCK_TIMEOUT": 10},
        {
            "STORAGE": "django_idempotency.storage.DatabaseStorage",
            "STORAGE_OPTIONS": {"DATABASE": "default"},
            "HEADER": "X-Idempotency-Key",
            "METHODS": ["POST", "put"],
            "ON_CONFLICT": "wait",
            "REPLAY_STATUS": 409,
            "FAIL_OPEN": True,
        },
    ],
)
@RUNS_SYSTEM_CHECKS
def test_a_valid_configuration_gives_no_messages(settings: Any, value: dict[str, Any]) -> None:
    settings.IDEMPOTENCY = value

    assert checks.check_settings() == []
    assert _run_checks() == []
    call_command("check", stdout=StringIO(), stderr=StringIO())


def test_no_setting_at_all_gives_no_messages(settings: Any) -> None:
    del settings.IDEMPOTENCY

    assert checks.check_settings() == []


# -- E001 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [["TTL", 60], "TTL=60", 60])
def test_e001_not_a_dict(settings: Any, value: Any) -> None:
    settings.IDEMPOTENCY = value

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E001"]
    assert isinstance(messages[0], Error)
    assert messages[0].hint


@RUNS_SYSTEM_CHECKS
def test_e001_through_the_check_command(settings: Any) -> None:
    settings.IDEMPOTENCY = ["TTL", 60]

    with pytest.raises(SystemCheckError, match=r"django_idempotency\.E001"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


# -- E002 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("TTLL", "TTL"), ("ttl", "TTL"), ("LOCK_TIMOUT", "LOCK_TIMEOUT"), ("HEADERS", "HEADER")],
)
def test_e002_unknown_key_with_a_suggestion(settings: Any, name: str, suggestion: str) -> None:
    settings.IDEMPOTENCY = {name: 60}

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E002"]
    assert repr(name) in messages[0].msg
    assert messages[0].hint == f"Did you mean {suggestion!r}?"


def test_e002_unknown_key_without_a_close_match_lists_the_known_keys(settings: Any) -> None:
    settings.IDEMPOTENCY = {"COLOUR": "blue"}

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E002"]
    assert messages[0].hint is not None
    assert "Known keys:" in messages[0].hint
    assert "TTL" in messages[0].hint


@RUNS_SYSTEM_CHECKS
def test_e002_through_run_checks_and_the_check_command(settings: Any) -> None:
    settings.IDEMPOTENCY = {"TTLL": 60}

    assert _ids(_run_checks()) == ["django_idempotency.E002"]
    with pytest.raises(SystemCheckError, match="Did you mean 'TTL'"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


# -- E003 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TTL", "1 day"),
        ("TTL", 0),
        ("TTL", -5),
        ("LOCK_TIMEOUT", True),
        ("ON_CONFLICT", 200),
        ("ON_CONFLICT", "later"),
        ("METHODS", "POST"),
        ("METHODS", ["POST", ""]),
        ("HEADER", "bad header"),
        ("HEADER", ""),
        ("KEY_PATTERN", "[unclosed"),
        ("KEY_FUNC", "no_such_module.key"),
        ("REQUIRED", "yes"),
        ("REPLAY_STATUS", 700),
        ("MAX_BODY_SIZE", -1),
        ("STORAGE_OPTIONS", ["DATABASE", "default"]),
    ],
)
def test_e003_bad_values(settings: Any, name: str, value: Any) -> None:
    settings.IDEMPOTENCY = {name: value}

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E003"]
    assert f"[{name!r}]" in messages[0].msg


def test_e003_reports_every_bad_value_at_once(settings: Any) -> None:
    settings.IDEMPOTENCY = {
        "TTL": "1 day",
        "ON_CONFLICT": 200,
        "METHODS": "POST",
        "HEADER": "bad header",
    }

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E003"] * 4
    text = " ".join(message.msg for message in messages)
    for name in ("TTL", "ON_CONFLICT", "METHODS", "HEADER"):
        assert f"[{name!r}]" in text


@RUNS_SYSTEM_CHECKS
def test_e003_through_the_check_command(settings: Any) -> None:
    settings.IDEMPOTENCY = {"TTL": "1 day"}

    with pytest.raises(SystemCheckError, match=r"django_idempotency\.E003"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


# -- E004 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "no_such_module.Storage",
        "django_idempotency.storage.NoSuchStorage",
        "django.http.HttpResponse",  # importable, not a store
        42,
    ],
)
def test_e004_unimportable_or_wrong_storage(settings: Any, path: Any) -> None:
    settings.IDEMPOTENCY = {"STORAGE": path}

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E004"]


@pytest.mark.parametrize("options", [{"DATABSE": "default"}, {"DATABASE": "default", "X": 1}])
def test_e004_storage_options_the_class_rejects(settings: Any, options: dict[str, Any]) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": options}

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E004"]
    assert "could not be created" in messages[0].msg


def test_a_store_that_cannot_be_built_is_reported_once(settings: Any) -> None:
    """``check --database`` runs both checks: E004 comes from the settings
    check, and the server check, which cannot reach a store that is not
    built, adds nothing (no second message, no traceback)."""
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABSE": "default"}}

    assert checks.check_storage_servers(databases=["default"]) == []
    assert _ids(checks.check_settings()) == ["django_idempotency.E004"]


@RUNS_SYSTEM_CHECKS
def test_e004_through_the_check_command(settings: Any) -> None:
    settings.IDEMPOTENCY = {"STORAGE": "no_such_module.Storage"}

    with pytest.raises(SystemCheckError, match=r"django_idempotency\.E004"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


# -- E005 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"TTL": 60, "LOCK_TIMEOUT": 60},
        {"TTL": 60, "LOCK_TIMEOUT": 120},
        {"LOCK_TIMEOUT": 100_000},  # longer than the default TTL (24 hours)
    ],
)
def test_e005_lock_timeout_not_below_ttl(settings: Any, value: dict[str, Any]) -> None:
    settings.IDEMPOTENCY = value

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E005"]
    assert messages[0].hint


@RUNS_SYSTEM_CHECKS
def test_e005_through_the_check_command(settings: Any) -> None:
    settings.IDEMPOTENCY = {"TTL": 60, "LOCK_TIMEOUT": 60}

    with pytest.raises(SystemCheckError, match=r"django_idempotency\.E005"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_lock_timeout_just_below_ttl_is_fine(settings: Any) -> None:
    settings.IDEMPOTENCY = {"TTL": 60, "LOCK_TIMEOUT": 59.5}

    assert checks.check_settings() == []


# -- E010 and W010: the database store -----------------------------------------------------


def test_e010_unknown_database_alias(settings: Any) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABASE": "no_such_alias"}}

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.E010"]
    assert "'no_such_alias'" in messages[0].msg


def test_e010_from_the_store_itself() -> None:
    assert _ids(DatabaseStorage(database="no_such_alias").check()) == ["django_idempotency.E010"]


@RUNS_SYSTEM_CHECKS
def test_e010_through_the_check_command(settings: Any) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABASE": "no_such_alias"}}

    with pytest.raises(SystemCheckError, match=r"django_idempotency\.E010"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_e011_a_database_the_store_has_no_statements_for(monkeypatch: Any) -> None:
    """A backend other than PostgreSQL, MySQL/MariaDB and SQLite (Oracle, a
    third-party one) is refused by the checks, before any request."""
    monkeypatch.setattr(connections["secondary"], "vendor", "oracle")

    messages = DatabaseStorage(database="secondary").check()

    assert _ids(messages) == ["django_idempotency.E011"]
    assert "'secondary' is 'oracle'" in messages[0].msg


def _w010(vendor: str) -> list[str]:
    """W010 is about SQLite only: elsewhere claims commit at once on a
    connection of their own, even inside the request's transaction."""
    return ["django_idempotency.W010"] if vendor == "sqlite" else []


def test_w010_atomic_requests_on_the_stores_database(atomic_alias: str, db_vendor: str) -> None:
    messages = DatabaseStorage(database=atomic_alias).check()

    assert _ids(messages) == _w010(db_vendor)
    if db_vendor == "sqlite":
        assert isinstance(messages[0], CheckWarning)
        assert repr(atomic_alias) in messages[0].msg


def test_w010_through_run_checks(settings: Any, atomic_alias: str, db_vendor: str) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABASE": atomic_alias}}

    assert _ids(checks.check_settings()) == _w010(db_vendor)
    assert _ids(_run_checks()) == _w010(db_vendor)


@RUNS_SYSTEM_CHECKS
def test_w010_is_a_warning_the_check_command_prints(
    settings: Any, atomic_alias: str, db_vendor: str
) -> None:
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABASE": atomic_alias}}
    out, err = StringIO(), StringIO()

    call_command("check", stdout=out, stderr=err)

    printed = "django_idempotency.W010" in out.getvalue() + err.getvalue()
    assert printed is (db_vendor == "sqlite")


def test_w010_in_atomic_mode_too(settings: Any, atomic_alias: str, db_vendor: str) -> None:
    """Atomic mode on SQLite joins the request's transaction as well."""
    settings.IDEMPOTENCY = {"STORAGE_OPTIONS": {"DATABASE": atomic_alias}, "ATOMIC": True}

    assert _ids(checks.check_settings()) == _w010(db_vendor)


def test_e006_atomic_with_a_store_outside_the_database(settings: Any) -> None:
    pytest.importorskip("django_redis")
    settings.IDEMPOTENCY = {
        "ATOMIC": True,
        "STORAGE": "django_idempotency.storage.RedisStorage",
        "STORAGE_OPTIONS": {"CACHE_ALIAS": "idempotency"},
    }

    messages = checks.check_settings()
    assert _ids(messages) == ["django_idempotency.E006"]
    assert "RedisStorage" in messages[0].msg
    assert _ids(_run_checks()) == ["django_idempotency.E006"]


class StoreWithoutRenewals(DatabaseStorage):
    """A store of a user's own, written before stores renewed leases."""

    renew = BaseStorage.renew  # type: ignore[assignment]


def test_w030_a_store_that_cannot_renew_leases(settings: Any) -> None:
    settings.IDEMPOTENCY = {"STORAGE": StoreWithoutRenewals()}

    messages = checks.check_settings()

    assert _ids(messages) == ["django_idempotency.W030"]
    assert "StoreWithoutRenewals" in messages[0].msg
    assert isinstance(messages[0], CheckWarning)


def test_the_stores_of_the_package_renew_leases(settings: Any) -> None:
    assert DatabaseStorage().renews_leases
    settings.IDEMPOTENCY = {}
    assert "django_idempotency.W030" not in _ids(checks.check_settings())


def test_no_w010_on_an_alias_without_atomic_requests(atomic_alias: str) -> None:
    assert connections.settings["default"].get("ATOMIC_REQUESTS") is False
    assert DatabaseStorage(database="default").check() == []


def test_a_storage_instance_in_the_settings_is_checked(settings: Any) -> None:
    settings.IDEMPOTENCY = {"STORAGE": DatabaseStorage(database="no_such_alias")}

    assert _ids(checks.check_settings()) == ["django_idempotency.E010"]


def test_the_check_is_registered_with_django() -> None:
    from django.core.checks.registry import registry

    assert checks.check_settings in registry.get_checks()
