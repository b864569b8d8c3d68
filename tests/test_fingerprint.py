"""Request fingerprints: what makes two requests with one key "the same request"."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, RequestFactory
from django.test.client import encode_multipart
from hypothesis import example, given
from hypothesis import strategies as st

from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.fingerprint import canonical_json, json_fingerprint, request_fingerprint

factory = RequestFactory()

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def make(
    body: bytes | str = b'{"amount": 10, "currency": "EUR"}',
    *,
    method: str = "post",
    path: str = "/payments/",
    headers: dict[str, str] | None = None,
) -> HttpRequest:
    request: HttpRequest = getattr(factory, method)(
        path, body, content_type="application/json", headers=headers or {}
    )
    return request


FINGERPRINTS = [request_fingerprint, json_fingerprint]


# -- the default -----------------------------------------------------------------------------


@pytest.mark.parametrize("fingerprint", FINGERPRINTS)
class TestBothFingerprints:
    def test_same_request_same_fingerprint(self, fingerprint: Callable[..., str]) -> None:
        assert fingerprint(make()) == fingerprint(make())

    def test_headers_do_not_matter(self, fingerprint: Callable[..., str]) -> None:
        plain = make()
        decorated = make(headers={"User-Agent": "retrying-client/2", "X-Request-Id": "r-9"})

        assert fingerprint(plain) == fingerprint(decorated)

    @pytest.mark.parametrize(
        "other",
        [
            pytest.param({"method": "put"}, id="method"),
            pytest.param({"method": "patch"}, id="method patch"),
            pytest.param({"path": "/refunds/"}, id="path"),
            pytest.param({"path": "/payments/?capture=1"}, id="query string"),
            pytest.param({"body": b'{"amount": 11, "currency": "EUR"}'}, id="body"),
            pytest.param({"body": b""}, id="empty body"),
        ],
    )
    def test_differs_on(self, fingerprint: Callable[..., str], other: dict[str, Any]) -> None:
        assert fingerprint(make()) != fingerprint(make(**other))

    def test_query_strings_differ(self, fingerprint: Callable[..., str]) -> None:
        assert fingerprint(make(path="/p/?a=1")) != fingerprint(make(path="/p/?a=2"))

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            pytest.param({"path": "/ab"}, {"path": "/a?b"}, id="path into query"),
            pytest.param({"path": "/a?b", "body": ""}, {"path": "/a", "body": "b"}, id="query"),
        ],
    )
    def test_bytes_moved_between_parts_are_another_request(
        self,
        fingerprint: Callable[..., str],
        first: dict[str, Any],
        second: dict[str, Any],
    ) -> None:
        assert fingerprint(make(**first)) != fingerprint(make(**second))

    def test_is_a_hex_digest(self, fingerprint: Callable[..., str]) -> None:
        value = fingerprint(make())

        assert len(value) == 64
        int(value, 16)


def test_default_compares_json_as_bytes() -> None:
    assert request_fingerprint(make('{"a": 1, "b": 2}')) != request_fingerprint(
        make('{"b": 2, "a": 1}')
    )


# -- json_fingerprint ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('{"a": 1, "b": 2}', '{"b": 2, "a": 1}'),
        ('{"a":1,"b":2}', '{\n  "a" : 1 ,\n  "b" : 2\n}\n'),
        ('{"o": {"x": [1, {"p": 1, "q": 2}]}}', '{"o":{"x":[1,{"q":2,"p":1}]}}'),
        ('"caf\\u00e9"', '"caf\u00e9"'),
        ("[1, 2]", " [1,2] "),
    ],
)
def test_json_fingerprint_ignores_key_order_and_whitespace(first: str, second: str) -> None:
    assert json_fingerprint(make(first)) == json_fingerprint(make(second))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('{"a": 1}', '{"a": 2}'),
        ('{"a": 1}', '{"a": "1"}'),
        ('{"a": 1}', '{"a": 1.5}'),
        ('{"a": 1}', '{"a": 1, "b": null}'),
        ("[1, 2]", "[2, 1]"),
        ('{"a": true}', '{"a": 1}'),
    ],
)
def test_json_fingerprint_differs_on_values(first: str, second: str) -> None:
    assert json_fingerprint(make(first)) != json_fingerprint(make(second))


def test_json_fingerprint_still_covers_method_path_and_query() -> None:
    base = json_fingerprint(make())

    assert json_fingerprint(make(method="put")) != base
    assert json_fingerprint(make(path="/other/")) != base
    assert json_fingerprint(make(path="/payments/?x=1")) != base


@pytest.mark.parametrize(
    "body",
    [b"amount=10&currency=EUR", b"{not json", b"\xff\xfe\x00garbage", b"[" * 100_000],
)
def test_json_fingerprint_falls_back_to_raw_bytes(body: bytes) -> None:
    assert json_fingerprint(make(body)) == json_fingerprint(make(body))
    assert json_fingerprint(make(body)) != json_fingerprint(make(body + b" x"))


def test_json_body_never_equals_a_raw_body() -> None:
    # The canonical form of this JSON body is the raw bytes of the other body.
    json_body = b'{ "a" : 1 }'
    canonical = canonical_json(json_body)
    assert canonical == b'{"a":1}'

    assert json_fingerprint(make(json_body)) != request_fingerprint(make(canonical))


@given(JSON_VALUES, st.binary(max_size=40))
@example({"a": 1}, b'{"a":1')
@example([], b"[]x")
def test_json_and_raw_bodies_meet_only_as_equal_json(value: Any, raw: bytes) -> None:
    json_body = json.dumps(value).encode()
    same = json_fingerprint(make(json_body)) == json_fingerprint(make(raw))

    raw_canonical = canonical_json(raw)
    assert same == (raw_canonical is not None and raw_canonical == canonical_json(json_body))


@given(JSON_VALUES)
def test_canonical_json_is_idempotent(value: Any) -> None:
    once = canonical_json(json.dumps(value, indent=2).encode())
    assert once is not None

    assert canonical_json(once) == once


@given(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=8), st.randoms())
def test_canonical_json_ignores_dict_order(value: dict[str, Any], random: Any) -> None:
    items = list(value.items())
    random.shuffle(items)
    shuffled = json.dumps(dict(items), separators=(", ", ": ")).encode()

    assert canonical_json(shuffled) == canonical_json(json.dumps(value).encode())


def test_canonical_json_of_non_json_is_none() -> None:
    assert canonical_json(b"{") is None
    assert canonical_json(b"\xff") is None
    assert canonical_json(b"[" * 100_000) is None


# -- request bodies Django has already parsed ------------------------------------------------


def create_from_upload(request: HttpRequest) -> HttpResponse:
    upload = request.FILES["receipt"]
    content = upload.read()
    order = Order.objects.create(item=f"{upload.name}:{len(content)}")
    return JsonResponse(
        {"id": order.pk, "item": order.item, "sha256": hashlib.sha256(content).hexdigest()},
        status=201,
    )


def multipart(fields: dict[str, Any], boundary: str) -> tuple[bytes, str]:
    return encode_multipart(boundary, fields), f"multipart/form-data; boundary={boundary}"


@pytest.mark.django_db
class TestUploads:
    def _upload(self, client: Client, url: str, size: int, **extra: str) -> HttpResponse:
        response: HttpResponse = client.post(
            url,
            {"receipt": SimpleUploadedFile("receipt.pdf", b"%" * size), **extra},
            headers={"Idempotency-Key": "upload-1"},
        )
        return response

    def test_form_post_with_csrf_checks(self, serve: Callable[..., str]) -> None:
        url = serve(idempotent(create_from_upload))
        client = Client(enforce_csrf_checks=True)
        client.cookies["csrftoken"] = "t" * 32

        first = self._upload(client, url, 100, csrfmiddlewaretoken="t" * 32)
        retry = self._upload(client, url, 100, csrfmiddlewaretoken="t" * 32)

        assert first.status_code == 201
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert retry.content == first.content
        assert Order.objects.count() == 1

    def test_upload_larger_than_data_upload_max_memory_size(
        self, client: Client, serve: Callable[..., str], settings: Any
    ) -> None:
        # Django streams large uploads to disk; the view accepts them unprotected.
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
        plain = serve(create_from_upload, "plain/")
        assert self._upload(client, plain, 10_000).status_code == 201
        url = serve(idempotent(create_from_upload))

        first = self._upload(client, url, 10_000)
        retry = self._upload(client, url, 10_000)

        assert first.status_code == 201
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert Order.objects.count() == 2

    def test_view_reads_the_whole_upload(self, client: Client, serve: Callable[..., str]) -> None:
        url = serve(idempotent(create_from_upload))

        response = self._upload(client, url, 70_000)

        assert response.json()["sha256"] == hashlib.sha256(b"%" * 70_000).hexdigest()
        assert response.json()["item"] == "receipt.pdf:70000"

    def test_same_form_with_another_boundary_is_the_same_request(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        url = serve(idempotent(create_from_upload))
        fields = {"note": "March", "receipt": SimpleUploadedFile("r.pdf", b"%PDF-1.7 a")}
        first_body, first_type = multipart(fields, "boundary-one")
        fields["receipt"] = SimpleUploadedFile("r.pdf", b"%PDF-1.7 a")
        second_body, second_type = multipart(fields, "other-boundary-two")
        headers = {"Idempotency-Key": "upload-2"}

        first = client.post(url, first_body, content_type=first_type, headers=headers)
        retry = client.post(url, second_body, content_type=second_type, headers=headers)

        assert first.status_code == 201
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert Order.objects.count() == 1

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param(("receipt", "r.pdf", b"%PDF-1.7 b"), id="content"),
            pytest.param(("receipt", "s.pdf", b"%PDF-1.7 a"), id="file name"),
            pytest.param(("note", "April", b""), id="field"),
        ],
    )
    def test_another_form_with_the_same_key_is_refused(
        self, client: Client, serve: Callable[..., str], change: tuple[str, str, bytes]
    ) -> None:
        url = serve(idempotent(create_from_upload))
        headers = {"Idempotency-Key": "upload-3"}
        original = {"note": "March", "receipt": SimpleUploadedFile("r.pdf", b"%PDF-1.7 a")}
        client.post(url, original, headers=headers)

        original["receipt"] = SimpleUploadedFile("r.pdf", b"%PDF-1.7 a")
        field, value, content = change
        original[field] = SimpleUploadedFile(value, content) if content else value
        response = client.post(url, original, headers=headers)

        assert response.status_code == 422
        assert json.loads(response.content)["code"] == "idempotency_key_mismatch"
        assert Order.objects.count() == 1
