"""System checks of how options of the ``IDEMPOTENCY`` setting fit together:
``W001`` (safe methods in ``METHODS``), a ``TTL`` set alone (its lease is
derived from it) and ``E005`` (a ``LOCK_TIMEOUT`` that does not fit ``TTL``)."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.checks import Tags, run_checks
from django.core.checks import Warning as CheckWarning
from django.core.management import call_command
from django.test import Client
from helpers import RUNS_SYSTEM_CHECKS, create_order, replayed, send

from django_idempotency import checks
from django_idempotency.decorators import idempotent

W001 = "django_idempotency.W001"


def _ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages if (m.id or "").startswith("django_idempotency.")]


@pytest.mark.parametrize(
    ("methods", "named"),
    [
        (["GET"], "the safe method GET "),
        (["POST", "head"], "the safe method HEAD "),
        (("OPTIONS", "PUT", "TRACE"), "the safe methods OPTIONS and TRACE "),
        (["get", "head", "options", "post"], "the safe methods GET, HEAD and OPTIONS "),
    ],
)
def test_w001_safe_methods_in_the_setting(settings: Any, methods: Any, named: str) -> None:
    settings.IDEMPOTENCY = {"METHODS": methods}

    messages = checks.check_settings()

    assert _ids(messages) == [W001]
    (warning,) = messages
    assert isinstance(warning, CheckWarning)
    assert warning.msg == (
        f"IDEMPOTENCY['METHODS'] protects {named}on every protected view that does not "
        "set its own methods."
    )
    assert warning.hint is not None
    assert "SILENCED_SYSTEM_CHECKS" in warning.hint
    assert "'django_idempotency.W001'" in warning.hint


@pytest.mark.parametrize("methods", [["POST"], ["post", "PUT", "PATCH", "DELETE"], []])
def test_no_w001_for_unsafe_methods_only(settings: Any, methods: list[str]) -> None:
    settings.IDEMPOTENCY = {"METHODS": methods}

    assert checks.check_settings() == []


@RUNS_SYSTEM_CHECKS
def test_w001_is_printed_by_check_and_fails_nothing(settings: Any) -> None:
    settings.IDEMPOTENCY = {"METHODS": ["GET", "POST"]}
    out, err = StringIO(), StringIO()

    call_command("check", stdout=out, stderr=err)

    assert W001 in out.getvalue() + err.getvalue()


@RUNS_SYSTEM_CHECKS
def test_w001_can_be_silenced(settings: Any) -> None:
    settings.IDEMPOTENCY = {"METHODS": ["GET", "POST"]}
    settings.SILENCED_SYSTEM_CHECKS = [W001]
    out, err = StringIO(), StringIO()

    call_command("check", stdout=out, stderr=err)

    assert W001 not in out.getvalue() + err.getvalue()


@pytest.mark.django_db
def test_methods_of_one_view_are_not_warned_about(
    client: Client, serve: Callable[..., str]
) -> None:
    """``methods=`` on a view is a choice made for that view: no W001."""
    url = serve(idempotent(create_order, methods=["GET", "POST"]))

    assert _ids(run_checks(tags=[Tags.compatibility])) == []
    client.get(url, HTTP_IDEMPOTENCY_KEY="k")
    assert replayed(client.get(url, HTTP_IDEMPOTENCY_KEY="k"))
    assert send(client, url, key="k").status_code == 422  # not the request the key was for


# -- TTL alone --------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [5, 0.5, 59, 60])
@RUNS_SYSTEM_CHECKS
def test_a_ttl_alone_passes_the_checks(settings: Any, ttl: float) -> None:
    """The lease is then derived from it (half of it, up to 30 s), and
    MAX_LOCK_TIME and COMPLETION_TIMEOUT are capped by TTL and the lease."""
    settings.IDEMPOTENCY = {"TTL": ttl}

    assert checks.check_settings() == []
    call_command("check", stdout=StringIO(), stderr=StringIO())


def test_e005_names_both_values_and_says_what_to_set(settings: Any) -> None:
    settings.IDEMPOTENCY = {"TTL": 60, "LOCK_TIMEOUT": 60}

    (error,) = checks.check_settings()

    assert error.id == "django_idempotency.E005"
    assert error.msg == (
        "IDEMPOTENCY['LOCK_TIMEOUT'] (60 s, set in the setting) must be below "
        "IDEMPOTENCY['TTL'] (60 s, set in the setting): a claim cannot outlive the "
        "record it claims."
    )
    assert error.hint == (
        "Set IDEMPOTENCY['LOCK_TIMEOUT'] below 60 s (for example to 30), or remove it "
        "to have it derived from TTL (the smaller of 30 s and half the TTL)."
    )


def test_e005_against_the_default_ttl(settings: Any) -> None:
    settings.IDEMPOTENCY = {"LOCK_TIMEOUT": 100_000}

    (error,) = checks.check_settings()

    assert error.id == "django_idempotency.E005"
    assert "must be below TTL (86400 s, the default)" in error.msg
