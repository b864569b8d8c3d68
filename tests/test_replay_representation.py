"""A replay gives back the same representation: the same bytes, with every
header that says what they are, through the middleware a project runs.

Each case is a first request and a retry with the same key, through Django's
whole request handling, on the database store and on the Redis store, and
asserts what a client would notice.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import AsyncClient, Client
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.gzip import gzip_page
from helpers import KEY, ORDER, View, asend, problem, replayed, send

from django_idempotency.decorators import idempotent
from django_idempotency.storage import BaseStorage

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

pytestmark = pytest.mark.django_db

#: A JSON body long enough for Django's gzip to compress it (200 bytes or more).
DOCUMENT = json.dumps({"receipt": "r-81", "lines": ["espresso"] * 40}).encode()

#: The contents of a small file download.
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 8

#: The chunks a streaming view yields, and what they make.
ROWS = [b"id,item\n", b"81,espresso\n", b"82,tea\n"]
CSV = b"".join(ROWS)

GZIP_MIDDLEWARE = "django.middleware.gzip.GZipMiddleware"
CONDITIONAL_GET_MIDDLEWARE = "django.middleware.http.ConditionalGetMiddleware"

ACCEPTS_GZIP = {"Accept-Encoding": "gzip"}


@pytest.fixture
def runs() -> list[int]:
    """One item per run of the view under test."""
    return []


@pytest.fixture
def protect(serve: Callable[..., str], store: BaseStorage) -> Callable[..., str]:
    """``protect(view, **options)``: the URL of ``view`` behind ``@idempotent`` on ``store``."""

    def mount(view: View, **options: Any) -> str:
        return serve(csrf_exempt(idempotent(storage=store, **options)(view)))

    return mount


@pytest.fixture
def middleware(settings: Any) -> Callable[..., None]:
    """``middleware(path, ...)``: add middleware outermost, as projects list GZip."""

    def add(*paths: str) -> None:
        settings.MIDDLEWARE = [*paths, *settings.MIDDLEWARE]

    return add


def body(response: Response) -> bytes:
    """The bytes a client receives, streamed or not."""
    return response.getvalue()


def assert_framed(response: Response) -> None:
    """``Content-Length`` is the length of the bytes sent."""
    assert response["Content-Length"] == str(len(body(response)))


# -- views ----------------------------------------------------------------------------------


def document(runs: list[int]) -> View:
    """Answers :data:`DOCUMENT`, uncompressed, with a strong ETag."""

    def view(request: HttpRequest) -> HttpResponse:
        runs.append(1)
        response = HttpResponse(DOCUMENT, content_type="application/json", status=201)
        response["ETag"] = '"receipt-r-81"'
        return response

    return view


def compressed_by_hand(runs: list[int]) -> View:
    """Compresses its own body, whatever the client accepts."""

    def view(request: HttpRequest) -> HttpResponse:
        runs.append(1)
        response = HttpResponse(gzip.compress(DOCUMENT), content_type="application/json")
        response["Content-Encoding"] = "gzip"
        response["Vary"] = "Accept-Encoding"
        return response

    return view


def compressed_by_gzip_page(runs: list[int]) -> View:
    """:func:`document` under Django's ``gzip_page``, as GZipMiddleware on one view."""
    return gzip_page(document(runs))


def file_download(runs: list[int], path: Path, **options: Any) -> View:
    def view(request: HttpRequest) -> FileResponse:
        runs.append(1)
        return FileResponse(path.open("rb"), as_attachment=True, **options)

    return view


def streaming(runs: list[int], chunks: list[bytes], length: int | None = None) -> View:
    """Streams ``chunks`` from a generator, declaring ``length`` if given."""

    def view(request: HttpRequest) -> StreamingHttpResponse:
        runs.append(1)
        response = StreamingHttpResponse(iter(chunks), content_type="text/csv")
        if length is not None:
            response["Content-Length"] = length
        return response

    return view


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    path = tmp_path / "receipt.pdf"
    path.write_bytes(PDF)
    return path


# -- a view that compresses its own body -----------------------------------------------------


@pytest.mark.parametrize("view", [compressed_by_hand, compressed_by_gzip_page])
@pytest.mark.parametrize("gzip_middleware", [False, True], ids=["plain", "GZipMiddleware"])
def test_compressed_body_is_replayed_with_its_encoding(
    client: Client,
    protect: Callable[..., str],
    middleware: Callable[..., None],
    runs: list[int],
    view: Callable[[list[int]], View],
    gzip_middleware: bool,
) -> None:
    if gzip_middleware:
        middleware(GZIP_MIDDLEWARE)
    url = protect(view(runs))
    first = send(client, url, headers=ACCEPTS_GZIP)

    retry = send(client, url, headers=ACCEPTS_GZIP)

    assert replayed(retry)
    assert retry.content == first.content
    assert retry["Content-Encoding"] == "gzip"
    assert gzip.decompress(retry.content) == DOCUMENT  # compressed once, not twice
    assert "Accept-Encoding" in retry["Vary"]
    assert_framed(retry)
    assert runs == [1]


# -- GZipMiddleware ----------------------------------------------------------------------------


def test_gzip_middleware_compresses_the_replay_once(
    client: Client, protect: Callable[..., str], middleware: Callable[..., None], runs: list[int]
) -> None:
    middleware(GZIP_MIDDLEWARE)
    url = protect(document(runs))
    first = send(client, url, headers=ACCEPTS_GZIP)

    retry = send(client, url, headers=ACCEPTS_GZIP)

    assert replayed(retry)
    assert first["Content-Encoding"] == retry["Content-Encoding"] == "gzip"
    assert gzip.decompress(first.content) == gzip.decompress(retry.content) == DOCUMENT
    assert retry["ETag"] == first["ETag"] == 'W/"receipt-r-81"'
    assert_framed(retry)
    assert runs == [1]


def test_gzip_middleware_replays_plain_to_a_client_without_gzip(
    client: Client, protect: Callable[..., str], middleware: Callable[..., None], runs: list[int]
) -> None:
    # The middleware compressed the first answer; the view's own body is stored.
    middleware(GZIP_MIDDLEWARE)
    url = protect(document(runs))
    send(client, url, headers=ACCEPTS_GZIP)

    retry = send(client, url)

    assert replayed(retry)
    assert "Content-Encoding" not in retry.headers
    assert retry.content == DOCUMENT
    assert_framed(retry)


# -- ConditionalGetMiddleware ------------------------------------------------------------------


def report(runs: list[int], etag: str | None = None) -> View:
    """A GET that does work (a report run once per key), with the view's ETag if given."""

    def view(request: HttpRequest) -> HttpResponse:
        runs.append(1)
        response = HttpResponse(DOCUMENT, content_type="application/json")
        if etag:
            response["ETag"] = etag
        return response

    return view


@pytest.fixture
def conditional_get(
    protect: Callable[..., str], middleware: Callable[..., None]
) -> Callable[[View], str]:
    """The URL of a GET view protected, under ConditionalGetMiddleware."""
    middleware(CONDITIONAL_GET_MIDDLEWARE)
    return lambda view: protect(view, methods=["GET"])


def test_conditional_get_gives_the_replay_the_first_etag(
    client: Client, conditional_get: Callable[[View], str], runs: list[int]
) -> None:
    url = conditional_get(report(runs))
    first = send(client, url, method="get")

    retry = send(client, url, method="get")

    assert replayed(retry)
    assert retry.status_code == 200
    assert retry["ETag"] == first["ETag"]
    assert retry.content == first.content == DOCUMENT
    assert_framed(retry)


@pytest.mark.parametrize("etag", [None, '"report-3"'], ids=["middleware etag", "view etag"])
def test_conditional_get_answers_a_revalidating_retry_304(
    client: Client, conditional_get: Callable[[View], str], runs: list[int], etag: str | None
) -> None:
    url = conditional_get(report(runs, etag))
    first = send(client, url, method="get")

    retry = send(client, url, method="get", headers={"If-None-Match": first["ETag"]})

    assert retry.status_code == 304
    assert retry.content == b""
    assert retry["ETag"] == first["ETag"]
    assert runs == [1]


def test_a_304_to_the_first_request_does_not_empty_the_replay(
    client: Client, conditional_get: Callable[[View], str], runs: list[int]
) -> None:
    url = conditional_get(report(runs, '"report-3"'))
    first = send(client, url, method="get", headers={"If-None-Match": '"report-3"'})

    retry = send(client, url, method="get")

    assert first.status_code == 304
    assert replayed(retry)
    assert retry.status_code == 200
    assert retry.content == DOCUMENT
    assert retry["ETag"] == '"report-3"'
    assert runs == [1]


# -- representation headers --------------------------------------------------------------------

#: Every header a replay carries by default, as a 206 of a compressed file sets them.
REPRESENTATION = {
    "Content-Type": "application/pdf",
    "Content-Encoding": "gzip",
    "Content-Language": "de",
    "Content-Location": "/receipts/r-81.pdf",
    "ETag": '"r-81-v2"',
    "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT",
    "Content-Disposition": 'attachment; filename="r-81.pdf"',
    "Content-Range": "bytes 0-9/2048",
    "Content-Digest": "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:",
    "Repr-Digest": "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
    "Vary": "Accept-Encoding, Accept-Language",
    "Location": "/receipts/r-81/",
    "Link": '</receipts/r-81/>; rel="canonical"',
}


def partial_receipt(runs: list[int]) -> View:
    def view(request: HttpRequest) -> HttpResponse:
        runs.append(1)
        return HttpResponse(gzip.compress(PDF)[:10], status=206, headers=REPRESENTATION)

    return view


@pytest.mark.parametrize("name", list(REPRESENTATION))
def test_representation_headers_are_replayed(
    client: Client, protect: Callable[..., str], runs: list[int], name: str
) -> None:
    url = protect(partial_receipt(runs))
    first = send(client, url)

    retry = send(client, url)

    assert replayed(retry)
    assert retry.status_code == 206
    assert retry.content == first.content
    assert retry[name] == first[name]
    assert retry[name].startswith(REPRESENTATION[name])  # Vary: middleware adds Cookie


def test_content_length_is_derived_from_the_stored_body(
    client: Client, protect: Callable[..., str], settings: Any, runs: list[int], pdf: Path
) -> None:
    # No CommonMiddleware: nothing but the replay itself adds Content-Length.
    settings.MIDDLEWARE = []
    url = protect(file_download(runs, pdf), replay_headers=["Content-Length"])
    first = send(client, url)

    retry = send(client, url)

    assert first["Content-Length"] == str(len(body(first)))
    assert replayed(retry)
    assert_framed(retry)


# -- files and other streams of known length -------------------------------------------------


def test_small_file_is_replayed(
    client: Client, protect: Callable[..., str], runs: list[int], pdf: Path
) -> None:
    url = protect(file_download(runs, pdf))
    first = send(client, url)

    retry = send(client, url)

    assert body(first) == PDF
    assert replayed(retry)
    assert retry.content == PDF
    for name in ("Content-Type", "Content-Disposition", "Content-Length"):
        assert retry[name] == first[name]
    assert retry["Content-Disposition"] == 'attachment; filename="receipt.pdf"'
    assert_framed(retry)
    assert runs == [1]


def test_stream_of_declared_length_is_replayed(
    client: Client, protect: Callable[..., str], runs: list[int]
) -> None:
    url = protect(streaming(runs, ROWS, len(CSV)))
    first = send(client, url)

    retry = send(client, url)

    assert body(first) == CSV
    assert replayed(retry)
    assert retry.content == CSV
    assert retry["Content-Type"] == "text/csv"
    assert runs == [1]


def wsgi_post(url: str) -> tuple[str, bytes]:
    """POST :data:`ORDER` with :data:`KEY` through Django's WSGI handler, as a
    server that offers ``wsgi.file_wrapper`` (gunicorn, uWSGI) does; the
    status line and the bytes it would send."""
    data = json.dumps(ORDER).encode()
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(
        {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": url,
            "HTTP_HOST": "testserver",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(data)),
            "HTTP_IDEMPOTENCY_KEY": KEY,
            "wsgi.input": io.BytesIO(data),
            "wsgi.file_wrapper": FileWrapper,
        }
    )
    status: list[str] = []
    result = WSGIHandler()(environ, lambda line, headers, exc_info=None: status.append(line))
    try:
        return status[0], b"".join(result)
    finally:
        result.close()


@pytest.mark.django_db(transaction=True)  # the WSGI handler closes connections after a request
def test_first_client_gets_the_file_from_a_server_with_file_wrapper(
    client: Client, protect: Callable[..., str], runs: list[int], pdf: Path
) -> None:
    url = protect(file_download(runs, pdf))

    status, sent = wsgi_post(url)
    retry = send(client, url)

    assert status == "200 OK"
    assert sent == PDF
    assert replayed(retry)
    assert retry.content == PDF


# -- streams that are not replayed -------------------------------------------------------------


class Pipe(io.RawIOBase):
    """A file that can only be read, as a pipe: its size is unknown."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


def in_memory_file(runs: list[int]) -> View:
    def view(request: HttpRequest) -> FileResponse:
        runs.append(1)
        return FileResponse(io.BytesIO(PDF), filename="receipt.pdf")

    return view


def piped_file(runs: list[int]) -> View:
    def view(request: HttpRequest) -> FileResponse:
        runs.append(1)
        return FileResponse(Pipe(PDF), filename="receipt.pdf")

    return view


@pytest.mark.parametrize(
    ("make_view", "options", "sent"),
    [
        pytest.param(in_memory_file, {"max_body_size": len(PDF) - 1}, PDF, id="large file"),
        pytest.param(piped_file, {}, PDF, id="file of unknown size"),
        pytest.param(partial(streaming, chunks=ROWS), {}, CSV, id="stream of unknown length"),
        pytest.param(
            partial(streaming, chunks=ROWS, length=8),
            {},
            CSV,
            id="stream longer than declared",
        ),
        pytest.param(
            partial(streaming, chunks=ROWS, length=1000),
            {},
            CSV,
            id="stream shorter than declared",
        ),
    ],
)
def test_stream_not_kept_whole_is_not_replayed(
    client: Client,
    protect: Callable[..., str],
    runs: list[int],
    make_view: Callable[[list[int]], View],
    options: dict[str, Any],
    sent: bytes,
) -> None:
    url = protect(make_view(runs), **options)
    first = send(client, url)

    duplicate = send(client, url)

    assert body(first) == sent  # every byte, as the view streamed them
    assert problem(duplicate, 409, "idempotency_response_not_stored")["original_status"] == 200
    assert runs == [1]


def test_stream_that_fails_reaches_the_client_as_it_failed(
    client: Client, protect: Callable[..., str], runs: list[int]
) -> None:
    def rows() -> Iterator[bytes]:
        yield b"id,item\n"
        raise ConnectionError("warehouse went away")

    def view(request: HttpRequest) -> StreamingHttpResponse:
        runs.append(1)
        return StreamingHttpResponse(rows(), headers={"Content-Length": "20"})

    url = protect(view)
    first = send(client, url)
    received: list[bytes] = []

    with pytest.raises(ConnectionError, match="warehouse went away"):
        received.extend(first.streaming_content)

    assert received == [b"id,item\n"]
    problem(send(client, url), 409, "idempotency_response_not_stored")
    assert runs == [1]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_async_stream_is_not_consumed(
    async_client: AsyncClient, protect: Callable[..., str], runs: list[int]
) -> None:
    async def rows() -> AsyncIterator[bytes]:
        for row in ROWS:
            yield row

    async def view(request: HttpRequest) -> StreamingHttpResponse:
        runs.append(1)
        return StreamingHttpResponse(rows(), headers={"Content-Length": str(len(CSV))})

    url = protect(view)
    first = await asend(async_client, url)
    sent = b"".join([chunk async for chunk in first.streaming_content])

    duplicate = await asend(async_client, url)

    assert sent == CSV
    problem(duplicate, 409, "idempotency_response_not_stored")
    assert runs == [1]
