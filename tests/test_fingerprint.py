"""Request fingerprints: what makes two requests with one key "the same request"."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory
from django.test.client import encode_multipart
from helpers import KEY, acounting, asend, counting, problem, replayed, send
from hypothesis import example, given
from hypothesis import strategies as st

from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.fingerprint import (
    MAX_EXPONENT_DIGITS,
    MAX_JSON_DEPTH,
    canonical_json,
    json_fingerprint,
    request_fingerprint,
)
from django_idempotency.storage import BaseStorage

factory = RequestFactory()
async_factory = AsyncRequestFactory()

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
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
    content_type: str = "application/json",
) -> HttpRequest:
    request: HttpRequest = getattr(factory, method)(
        path, body, content_type=content_type, headers=headers or {}
    )
    return request


def make_asgi(query_string: bytes | str) -> HttpRequest:
    """The default request of :func:`make`, as Django's ASGI handler builds
    it from a scope whose ``query_string`` is ``query_string``."""
    request: HttpRequest = async_factory.post(
        "/payments/",
        b'{"amount": 10, "currency": "EUR"}',
        content_type="application/json",
        QUERY_STRING=query_string,
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
            pytest.param({"content_type": "application/x-www-form-urlencoded"}, id="media type"),
            pytest.param({"content_type": "application/json; charset=latin-1"}, id="charset"),
            pytest.param({"path": "/payments/?q=\u4e2d"}, id="non-ASCII query"),
        ],
    )
    def test_differs_on(self, fingerprint: Callable[..., str], other: dict[str, Any]) -> None:
        assert fingerprint(make()) != fingerprint(make(**other))

    def test_query_strings_differ(self, fingerprint: Callable[..., str]) -> None:
        assert fingerprint(make(path="/p/?a=1")) != fingerprint(make(path="/p/?a=2"))

    def test_non_ascii_query_strings_differ(self, fingerprint: Callable[..., str]) -> None:
        assert fingerprint(make(path="/p/?q=\u4e2d")) != fingerprint(make(path="/p/?q=\u6587"))

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            pytest.param("q=\u4e2d", "q=\u6587", id="as Django's test client sends it"),
            pytest.param(b"q=\xe4\xb8\xad", b"q=\xe6\x96\x87", id="as servers send it"),
        ],
    )
    def test_non_ascii_query_strings_differ_under_asgi(
        self, fingerprint: Callable[..., str], first: bytes | str, second: bytes | str
    ) -> None:
        assert fingerprint(make_asgi(first)) != fingerprint(make_asgi(second))

    @pytest.mark.parametrize("query", ["q=\u4e2d", "q=caf%C3%A9&x=%20", ""])
    def test_wsgi_and_asgi_see_the_same_query_string(
        self, fingerprint: Callable[..., str], query: str
    ) -> None:
        wsgi = make(path=f"/payments/?{query}")

        assert fingerprint(make_asgi(query.encode())) == fingerprint(wsgi)
        assert fingerprint(make_asgi(query)) == fingerprint(wsgi)

    @pytest.mark.parametrize(
        "content_type",
        [
            "APPLICATION/JSON",
            pytest.param("application/json; version=2", id="a parameter other than charset"),
        ],
    )
    def test_media_type_case_and_other_parameters_do_not_matter(
        self, fingerprint: Callable[..., str], content_type: str
    ) -> None:
        assert fingerprint(make(content_type=content_type)) == fingerprint(make())

    def test_charset_case_does_not_matter(self, fingerprint: Callable[..., str]) -> None:
        assert fingerprint(make(content_type="application/json; charset=UTF-8")) == fingerprint(
            make(content_type="Application/JSON;charset=utf-8")
        )

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
        ('"\\ud83d\\ude00"', '"\U0001f600"'),
        ('"\\ud800"', '"\\uD800"'),
        ('"a/b"', '"a\\/b"'),
        ("[1, 2]", " [1,2] "),
        ("4200", "4200.0"),
        ("[1, 1, 1]", "[1e0, 10e-1, 0.1E+1]"),
        ("0.3", "3e-1"),
        ("0", "0.0e7"),
        ("-0", "-0.0"),
        ("1e400", "10e399"),
        ("1" + "0" * 1000, "1e1000"),
        ('{"a": 5, "b": 1, "a": 500}', '{"b": 1, "a": 5, "a": 500}'),
    ],
)
def test_json_fingerprint_ignores_how_the_same_value_is_written(first: str, second: str) -> None:
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
        ("0.3", "0.30000000000000000001"),
        ("9007199254740993", "9007199254740992"),
        ("1e400", "2e400"),
        ("1e-400", "0"),
        ("0", "-0"),
        ('"\\ud800"', '"\\ud801"'),
        ('"\\ud800"', '"\ufffd"'),
        ('"\\ud83d\\ude00 "', '"\\ud83d \\ude00"'),
        ('{"amount": 5, "amount": 500}', '{"amount": 500}'),
        ('{"amount": 5, "amount": 500}', '{"amount": 500, "amount": 5}'),
        ('{"amount": 5, "amount": 5}', '{"amount": 5}'),
    ],
)
def test_json_fingerprint_differs_on_values(first: str, second: str) -> None:
    assert json_fingerprint(make(first)) != json_fingerprint(make(second))


def test_json_fingerprint_still_covers_method_path_and_query() -> None:
    base = json_fingerprint(make())

    assert json_fingerprint(make(method="put")) != base
    assert json_fingerprint(make(path="/other/")) != base
    assert json_fingerprint(make(path="/payments/?x=1")) != base


NOT_STRICT_JSON = [
    pytest.param(b"amount=10&currency=EUR", id="form"),
    pytest.param(b"{not json", id="broken"),
    pytest.param(b"", id="empty"),
    pytest.param(b'{"a": NaN}', id="NaN"),
    pytest.param(b"[Infinity, 1]", id="Infinity"),
    pytest.param(b"-Infinity", id="-Infinity"),
    pytest.param(b'{"a": 1} {"a": 2}', id="trailing value"),
    pytest.param(b"[1, 2,]", id="trailing comma"),
    pytest.param(b"\xef\xbb\xbf[1, 2]", id="byte order mark"),
    pytest.param('{"a": 1}'.encode("utf-16"), id="UTF-16"),
    pytest.param(b"\xff\xfe\x00garbage", id="invalid UTF-8"),
    pytest.param(b'"\xed\xa0\x80"', id="UTF-8 encoded surrogate"),
    pytest.param(b'"tab\there"', id="control character"),
    pytest.param(b"[01]", id="leading zero"),
    pytest.param(b"[1e" + b"9" * (MAX_EXPONENT_DIGITS + 1) + b"]", id="exponent too long"),
    pytest.param(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), id="too deep"),
    pytest.param(b"[" * 100_000, id="far too deep"),
]


@pytest.mark.parametrize("body", NOT_STRICT_JSON)
def test_json_fingerprint_hashes_what_is_not_strict_json_as_bytes(body: bytes) -> None:
    assert canonical_json(body) is None
    assert json_fingerprint(make(body)) == json_fingerprint(make(body))
    assert json_fingerprint(make(body)) != json_fingerprint(make(body + b" "))


def nested(depth: int, members: str) -> str:
    """An object of ``members``, in arrays: ``depth`` levels in all."""
    return "[" * (depth - 1) + "{" + members + "}" + "]" * (depth - 1)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, MAX_JSON_DEPTH - 1])
def test_json_fingerprint_compares_values_up_to_the_depth_limit(depth: int) -> None:
    first, second = nested(depth, '"a":1,"b":2'), nested(depth, '"b":2,"a":1')

    assert json_fingerprint(make(first)) == json_fingerprint(make(second))


def test_json_fingerprint_compares_exponents_up_to_their_limit() -> None:
    first = "1e" + "9" * MAX_EXPONENT_DIGITS
    second = "10e" + "9" * (MAX_EXPONENT_DIGITS - 1) + "8"

    assert json_fingerprint(make(first)) == json_fingerprint(make(second))


def test_json_fingerprint_of_a_body_at_the_size_limit(settings: Any) -> None:
    zeros = settings.DATA_UPLOAD_MAX_MEMORY_SIZE - len('{"b":0.1,"a":1}')

    huge = '{"b":0.' + "0" * zeros + '1,"a":1}'
    reordered = '{"a":1,"b":1e-' + str(zeros + 1) + "}"

    assert json_fingerprint(make(huge)) == json_fingerprint(make(reordered))


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


# -- through a protected view, on each store -------------------------------------------------


@pytest.fixture
def protect(serve: Callable[..., str], store: BaseStorage) -> Callable[..., str]:
    """``protect(fingerprint, view=None)``: the URL of ``view`` (by default
    one that answers 201 without reading the body) protected on ``store``."""

    def mount(fingerprint: Callable[[HttpRequest], str], view: Any = None) -> str:
        return serve(idempotent(storage=store, fingerprint_func=fingerprint)(view or counting([])))

    return mount


def assert_refused(response: HttpResponse) -> None:
    problem(response, 422, "idempotency_key_mismatch")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("first", "changed", "reordered"),
    [
        pytest.param(
            '{"note": "\\ud800", "n": 1}',
            '{"note": "\\ud801", "n": 1}',
            '{"n": 1, "note": "\\uD800"}',
            id="lone surrogate",
        ),
        pytest.param(
            '{"amount": 0.3, "n": 1}',
            '{"amount": 0.30000000000000000001, "n": 1}',
            '{"n": 1, "amount": 0.30}',
            id="beyond float precision",
        ),
        pytest.param(
            '{"amount": 9007199254740993, "n": 1}',
            '{"amount": 9007199254740992, "n": 1}',
            '{"n": 1, "amount": 9007199254740993}',
            id="beyond 2**53",
        ),
        pytest.param(
            '{"amount": 1e400, "n": 1}',
            '{"amount": 2e400, "n": 1}',
            '{"n": 1, "amount": 10e399}',
            id="beyond float range",
        ),
        pytest.param(
            '{"amount": 5, "n": 1, "amount": 500}',
            '{"amount": 500, "n": 1}',
            '{"n": 1, "amount": 5, "amount": 500}',
            id="duplicate names",
        ),
    ],
)
def test_json_fingerprint_through_a_view(
    client: Client, protect: Callable[..., str], first: str, changed: str, reordered: str
) -> None:
    url = protect(json_fingerprint)

    response = send(client, url, first)
    refusal = send(client, url, changed)
    retry = send(client, url, reordered)

    assert response.status_code == 201
    assert_refused(refusal)
    assert replayed(retry)
    assert retry.content == response.content


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fingerprint", FINGERPRINTS)
@pytest.mark.parametrize("body", NOT_STRICT_JSON)
def test_a_body_that_is_not_strict_json_is_compared_as_bytes(
    client: Client, protect: Callable[..., str], fingerprint: Callable[..., str], body: bytes
) -> None:
    url = protect(fingerprint)

    response = send(client, url, body)
    retry = send(client, url, body)
    refusal = send(client, url, body + b" ")

    assert response.status_code == 201
    assert replayed(retry)
    assert_refused(refusal)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fingerprint", FINGERPRINTS)
def test_the_same_bytes_as_another_media_type_are_another_request(
    client: Client, protect: Callable[..., str], fingerprint: Callable[..., str]
) -> None:
    url = protect(fingerprint)
    body, headers = b'{"item": "tea"}', {"Idempotency-Key": KEY}

    def post(content_type: str) -> HttpResponse:
        response: HttpResponse = client.post(url, body, content_type=content_type, headers=headers)
        return response

    response = post("application/json")
    refusal = post("application/x-www-form-urlencoded")
    retry = post("Application/JSON")

    assert response.status_code == 201
    assert_refused(refusal)
    assert replayed(retry)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fingerprint", FINGERPRINTS)
def test_non_ascii_query_strings_under_wsgi(
    client: Client, protect: Callable[..., str], fingerprint: Callable[..., str]
) -> None:
    url = protect(fingerprint)

    response = send(client, url + "?q=中")
    refusal = send(client, url + "?q=文")
    retry = send(client, url + "?q=中")

    assert response.status_code == 201
    assert_refused(refusal)
    assert replayed(retry)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_orm_thread_connections")
@pytest.mark.parametrize("fingerprint", FINGERPRINTS)
async def test_non_ascii_query_strings_under_asgi(
    async_client: AsyncClient, protect: Callable[..., str], fingerprint: Callable[..., str]
) -> None:
    url = protect(fingerprint, acounting([]))

    response = await asend(async_client, url + "?q=中")
    refusal = await asend(async_client, url + "?q=文")
    retry = await asend(async_client, url + "?q=中")

    assert response.status_code == 201
    assert_refused(refusal)
    assert replayed(retry)
