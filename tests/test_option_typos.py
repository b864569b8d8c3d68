"""A misspelt option is refused with the closest option's name, the same help
for a key of the ``IDEMPOTENCY`` setting (check ``E002``), a keyword of
``@idempotent`` and an ``idempotency_*`` attribute of a DRF view."""

from __future__ import annotations

from typing import Any

import pytest

from django_idempotency import checks, conf
from django_idempotency.decorators import idempotent

TYPOS = [
    ("tll", "ttl"),
    ("TTL", "ttl"),
    ("lock_timout", "lock_timeout"),
    ("requried", "required"),
    ("max_lock", "max_lock_time"),
    ("replay_header", "replay_headers"),
]


@pytest.mark.parametrize(("typo", "meant"), TYPOS)
def test_a_misspelt_keyword_names_the_closest_option(typo: str, meant: str) -> None:
    with pytest.raises(TypeError) as raised:
        idempotent(**{typo: 60})

    assert str(raised.value) == (
        f"idempotent({typo}=...): there is no per-view option {typo!r}. "
        f"Did you mean idempotent({meant}=...)?"
    )


@pytest.mark.parametrize(("typo", "meant"), [(t, m) for t, m in TYPOS if t.upper() != m.upper()])
def test_the_settings_check_suggests_the_same_option(settings: Any, typo: str, meant: str) -> None:
    settings.IDEMPOTENCY = {typo.upper(): 60}

    (message,) = checks.check_settings()

    assert message.id == "django_idempotency.E002"
    assert message.hint == f"Did you mean {meant.upper()!r}?"


def test_a_keyword_like_no_option_lists_them_all() -> None:
    with pytest.raises(TypeError) as raised:
        idempotent(colour="blue")

    message = str(raised.value)
    assert message.startswith(
        "idempotent(colour=...): there is no per-view option 'colour'. Known options: "
    )
    listed = message.split("Known options: ")[1].rstrip(".").split(", ")
    assert listed == sorted(conf.PER_VIEW_OPTIONS)


def test_a_setting_only_option_as_a_keyword_says_where_it_goes() -> None:
    with pytest.raises(TypeError) as raised:
        idempotent(storage_options={"DATABASE": "default"})

    assert str(raised.value) == (
        "idempotent(storage_options=...): 'storage_options' cannot be set per view, "
        "only in the IDEMPOTENCY setting, as 'STORAGE_OPTIONS'"
    )


# -- the DRF mixin: refused when the class is defined, or when as_view() gets it ----------------


@pytest.fixture
def drf() -> Any:
    pytest.importorskip("rest_framework")
    from rest_framework.views import APIView

    from django_idempotency.rest_framework import IdempotencyMixin

    return IdempotencyMixin, APIView


@pytest.mark.parametrize(("typo", "meant"), TYPOS)
def test_a_misspelt_mixin_attribute_names_the_closest_attribute(
    drf: Any, typo: str, meant: str
) -> None:
    with pytest.raises(TypeError) as raised:
        type("Orders", drf, {f"idempotency_{typo}": 60})

    assert str(raised.value) == (
        f"Orders.idempotency_{typo}: there is no per-view option {typo!r}. "
        f"Did you mean Orders.idempotency_{meant}?"
    )


def test_a_per_option_getter_points_to_get_idempotency_options(drf: Any) -> None:
    with pytest.raises(TypeError) as raised:
        type("Orders", drf, {"get_idempotency_required": lambda view: True})

    assert str(raised.value) == (
        "Orders.get_idempotency_required: options are decided per request by "
        "get_idempotency_options(), as in: def get_idempotency_options(self): "
        "return {'required': ...}"
    )


def test_a_misspelt_option_given_to_as_view(drf: Any) -> None:
    orders = type("Orders", drf, {"post": lambda view, request: None})

    with pytest.raises(TypeError, match=r"Did you mean Orders\.idempotency_ttl\?"):
        orders.as_view(idempotency_tll=60)


def test_a_misspelt_option_of_an_action_is_refused_when_the_urls_are_built() -> None:
    pytest.importorskip("rest_framework")
    from rest_framework.decorators import action
    from rest_framework.routers import SimpleRouter
    from rest_framework.viewsets import ViewSet

    from django_idempotency.rest_framework import IdempotencyMixin

    class Payments(IdempotencyMixin, ViewSet):
        @action(detail=False, methods=["post"], idempotency_requried=True)
        def refund(self, request: Any) -> None: ...

    router = SimpleRouter()
    router.register("payments", Payments, basename="payment")

    with pytest.raises(
        TypeError,
        match=r"Payments\.idempotency_requried: .* Did you mean \S*\.idempotency_required\?",
    ):
        router.urls  # noqa: B018


def test_a_setting_only_option_as_a_mixin_attribute(drf: Any) -> None:
    with pytest.raises(TypeError, match=r"cannot be set per view, only in the IDEMPOTENCY"):
        type("Orders", drf, {"idempotency_storage_options": {}})


def test_the_decorator_above_api_view_names_the_closest_option() -> None:
    pytest.importorskip("rest_framework")
    from rest_framework.decorators import api_view

    @api_view(["POST"])
    def refund(request: Any) -> None: ...

    with pytest.raises(TypeError, match=r"Did you mean idempotent\(ttl=\.\.\.\)\?"):
        idempotent(tll=60)(refund)
