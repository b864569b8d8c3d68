"""Idempotency keys as clients send them: quoted Structured-Field strings, bare
tokens, and everything that must be refused with 400 before any store is asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import Client
from django.urls import get_resolver
from helpers import create_order, replayed, send
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.errors import KeyInvalid
from django_idempotency.keys import parse_header_value
from django_idempotency.models import IdempotencyKey

#: Printable ASCII: what the default key format allows.
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
VALID_KEYS = st.text(PRINTABLE, min_size=1, max_size=255)


def quote(key: str) -> str:
    """``key`` as an RFC 8941 sf-string."""
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def assert_invalid(response: HttpResponse) -> None:
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert json.loads(response.content)["code"] == "idempotency_key_invalid"


# -- parse_header_value ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ('"abc"', "abc"),
        ('"order 17"', "order 17"),
        ('"a\\"b"', 'a"b'),
        ('"back\\\\slash"', "back\\slash"),
        ('"\\"\\\\\\""', '"\\"'),
        ('"a,b"', "a,b"),
        ('  "padded"\t', "padded"),
        ('" inner spaces "', " inner spaces "),
        ("token", "token"),
        ("  token  ", "token"),
        ("\ttoken\t", "token"),
        ("tok en", "tok en"),
        ('a"b', 'a"b'),
        ("8e9a2c4e-1b7d-4d4e-9f5a-0c1b2d3e4f5a", "8e9a2c4e-1b7d-4d4e-9f5a-0c1b2d3e4f5a"),
    ],
)
def test_parse_header_value(raw: str, key: str) -> None:
    assert parse_header_value(raw) == key


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('"a\\nb"', id="unknown escape"),
        pytest.param('"a\\', id="trailing backslash"),
        pytest.param('"abc', id="unterminated"),
        pytest.param('"', id="lone quote"),
        pytest.param('"a"b"', id="unescaped quote"),
        pytest.param('"abc"def', id="text after the string"),
        pytest.param('"a", "b"', id="two quoted keys"),
        pytest.param("a, b", id="two tokens"),
        pytest.param("a,b", id="two tokens without space"),
        pytest.param('"a\x01b"', id="control character in quotes"),
        pytest.param('"a\tb"', id="tab in quotes"),
        pytest.param('"cl\u00e9"', id="non-ascii in quotes"),
        pytest.param("x" * 1025, id="over the raw limit"),
        pytest.param("x" * 1024 * 1024, id="a megabyte"),
    ],
)
def test_parse_header_value_refuses(raw: str) -> None:
    with pytest.raises(KeyInvalid):
        parse_header_value(raw)


@given(VALID_KEYS)
@example("\\")
@example('"')
@example(" leading and trailing ")
@example(",")
@example("\\" * 255)
def test_any_valid_key_round_trips_through_quoting(key: str) -> None:
    assert parse_header_value(quote(key)) == key
    assert parse_header_value(" " + quote(key) + "\t") == key


@given(VALID_KEYS.filter(lambda k: k == k.strip(" ") and not k.startswith('"') and "," not in k))
def test_bare_token_is_the_key_itself(key: str) -> None:
    assert parse_header_value(key) == key


@given(st.text(max_size=1100) | st.text(PRINTABLE | st.sampled_from('"\\,\t'), max_size=300))
@example("\ud800")
@example('"\\')
@example("\x00")
def test_parse_raises_nothing_but_key_invalid(raw: str) -> None:
    outcome = _parse(raw)

    if isinstance(outcome, KeyInvalid):
        assert outcome.code == "idempotency_key_invalid"
        assert outcome.status == 400
    else:
        assert len(outcome) <= len(raw)


def _parse(raw: str) -> str | KeyInvalid:
    # Any exception other than KeyInvalid propagates and fails the test.
    try:
        return parse_header_value(raw)
    except KeyInvalid as exc:
        return exc


# -- through a view --------------------------------------------------------------------------


@pytest.mark.django_db
class TestKeysThroughAView:
    @pytest.fixture
    def url(self, serve: Callable[..., str]) -> str:
        return serve(idempotent(create_order))

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            ('"order-1"', "order-1"),
            ("order-1", '"order-1"'),
            ("  order-1  ", "order-1"),
            ('"a\\"b\\\\c"', 'a"b\\c'),
            ('  "spaced key"', "spaced key"),
        ],
    )
    def test_quoted_and_bare_forms_of_one_key_meet(
        self, client: Client, url: str, first: str, second: str
    ) -> None:
        original = send(client, url, key=first)

        retry = send(client, url, key=second)

        assert original.status_code == 201
        assert replayed(retry)
        assert retry.content == original.content
        assert Order.objects.count() == 1

    def test_stored_key_is_the_unquoted_key(self, client: Client, url: str) -> None:
        send(client, url, key='"a\\"b\\\\c"')

        assert IdempotencyKey.objects.get().key == 'a"b\\c'

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param('"a\\qb"', id="bad escape"),
            pytest.param('"unterminated', id="unterminated quote"),
            pytest.param("bell\x07", id="control character"),
            pytest.param("tab\tinside", id="tab"),
            pytest.param("cl\u00e9", id="non-ascii"),
            pytest.param("\u20ac100", id="euro sign"),
            pytest.param("", id="empty"),
            pytest.param('""', id="empty quoted"),
            pytest.param("   ", id="blank"),
            pytest.param("k" * 256, id="256 characters"),
            pytest.param(quote("k" * 256), id="256 characters quoted"),
            pytest.param("k" * 1024 * 1024, id="a megabyte"),
            pytest.param("first-key, second-key", id="two keys"),
            pytest.param('"first-key", "second-key"', id="two quoted keys"),
        ],
    )
    def test_invalid_key_is_refused_and_the_view_does_not_run(
        self, client: Client, url: str, raw: str
    ) -> None:
        response = send(client, url, key=raw)

        assert_invalid(response)
        assert Order.objects.count() == 0
        assert not IdempotencyKey.objects.exists()

    @pytest.mark.parametrize(
        "raw", ["k" * 255, quote("k" * 255), quote('"' * 255), quote("\\" * 255)]
    )
    def test_255_characters_are_valid(self, client: Client, url: str, raw: str) -> None:
        first = send(client, url, key=raw)

        retry = send(client, url, key=raw)

        assert first.status_code == 201
        assert replayed(retry)
        assert len(IdempotencyKey.objects.get().key) == 255

    @pytest.mark.parametrize("source", ["header", "key_func"])
    def test_key_over_255_characters_is_refused_whatever_the_pattern(
        self, client: Client, serve: Callable[..., str], source: str
    ) -> None:
        # A pattern without an upper bound still cannot make a key longer than
        # the 255 characters every store keeps.
        long_id = "7" * 300
        options: dict[str, Any] = {"key_pattern": r"[0-9]+"}
        if source == "key_func":
            options["key_func"] = lambda request: json.loads(request.body)["transactionId"]
        url = serve(idempotent(**options)(create_order))

        response = client.post(
            url,
            json.dumps({"transactionId": int(long_id)}),
            content_type="application/json",
            headers={"Idempotency-Key": long_id},
        )

        assert_invalid(response)
        assert Order.objects.count() == 0


@pytest.mark.django_db
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=VALID_KEYS)
def test_quoted_key_replays_through_a_view(
    client: Client, serve: Callable[..., str], key: str
) -> None:
    url = "/property/"
    if not any(str(pattern.pattern) == "property/" for pattern in get_resolver().url_patterns):
        serve(idempotent(create_order), "property/")
    first = send(client, url, key=quote(key))
    assert first.status_code == 201

    retry = send(client, url, key=quote(key))

    assert replayed(retry)
    assert retry.content == first.content
