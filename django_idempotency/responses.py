"""Stored responses: what is kept of a view's response, and how it is replayed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from typing import cast

from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse

from django_idempotency.records import StoredResponse

__all__ = [
    "NEVER_REPLAYED_HEADERS",
    "REPLAYED_HEADER",
    "SAFE_REPLAY_HEADERS",
    "StoredResponse",
    "capture",
    "replay",
    "replayable_headers",
    "store_if_not_server_error",
]

#: The header that marks a replay.
REPLAYED_HEADER = "Idempotent-Replayed"

#: Response headers stored with the body and replayed with it, always (the
#: ``replay_headers`` option adds to them). A replay must give back the same
#: representation: the bytes and every header that says what they are, so
#: that a client or cache reads them as it read the first answer. Hence:
#:
#: * RFC 9110's representation metadata (section 8.3-8.7): ``Content-Type``,
#:   ``Content-Encoding`` (a gzip body without it cannot be decoded),
#:   ``Content-Language``, ``Content-Location``; and its validators (section
#:   8.8): ``ETag``, ``Last-Modified``.
#: * What else describes the stored bytes: ``Content-Disposition`` (RFC 6266,
#:   how to save them), ``Content-Range`` (RFC 9110 section 14.4, which part
#:   a 206 holds), ``Content-Digest`` and ``Repr-Digest`` (RFC 9530, digests
#:   of them), and ``Vary`` (RFC 9110 section 12.5.5, which request headers
#:   chose this representation, without which a cache may serve it to a
#:   client that cannot read it).
#: * What the request produced: ``Location`` and ``Link``.
#:
#: Headers of one exchange are never on it: ``Date``, ``Set-Cookie``,
#: ``Cache-Control``, ``Expires``, ``Age``, request ids, authentication
#: challenges. Middleware adds its own headers to a replay as to any response.
SAFE_REPLAY_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Content-Language",
    "Content-Location",
    "ETag",
    "Last-Modified",
    "Content-Disposition",
    "Content-Range",
    "Content-Digest",
    "Repr-Digest",
    "Vary",
    "Location",
    "Link",
)

#: Never stored, even if ``replay_headers`` names them: ``Content-Length``
#: frames one message and is derived from the replayed body (it changes when
#: middleware compresses a replay); a raw ``Set-Cookie`` belongs to the
#: client of the first exchange.
NEVER_REPLAYED_HEADERS = frozenset({"content-length", "set-cookie"})


def replayable_headers(extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The lower-case names of the headers stored with a body and replayed
    with it: :data:`SAFE_REPLAY_HEADERS` and ``extra`` (the
    ``replay_headers`` option), never :data:`NEVER_REPLAYED_HEADERS`."""
    names = frozenset(name.lower() for name in (*SAFE_REPLAY_HEADERS, *extra))
    return names - NEVER_REPLAYED_HEADERS


def store_if_not_server_error(response: HttpResponseBase) -> bool:
    """The default ``store_if``: keep every outcome but a server error (5xx)."""
    return response.status_code < 500


def defer_until_rendered(
    response: HttpResponseBase,
    on_rendered: Callable[[HttpResponseBase], None],
    on_failed: Callable[[], None],
) -> bool:
    """Call ``on_rendered`` once a ``TemplateResponse`` is rendered, or
    ``on_failed`` if rendering raises; False if ``response`` has its content
    already.

    Django renders template responses after the view, once template response
    middleware had its say; the stored body must be the rendered one.
    """
    if getattr(response, "is_rendered", True):
        return False
    render: Callable[[], HttpResponseBase] = response.render  # type: ignore[attr-defined]

    def render_or_fail() -> HttpResponseBase:
        try:
            return render()
        except BaseException:
            on_failed()
            raise

    response.render = render_or_fail  # type: ignore[attr-defined]
    response.add_post_render_callback(on_rendered)  # type: ignore[attr-defined]
    return True


def render_now(response: HttpResponseBase) -> None:
    """Render a ``TemplateResponse`` (or DRF ``Response``) that is not yet
    rendered; Django skips rendering it again later."""
    if not getattr(response, "is_rendered", True):
        response.render()  # type: ignore[attr-defined]


def capture(
    response: HttpResponseBase, *, max_body_size: int, headers: frozenset[str]
) -> StoredResponse:
    """What to store of ``response``: its status, and its body (at most
    ``max_body_size`` bytes) with the ``headers`` that describe it (lower-case
    names, see :func:`replayable_headers`), or no body at all (not replayable).

    The body and its headers are taken together here and nowhere else, so a
    body is never stored without, say, its ``Content-Encoding``.
    """
    body = stored_body(response, max_body_size)
    if body is None:
        return StoredResponse(status=response.status_code, replayable=False)
    kept = tuple((name, value) for name, value in response.items() if name.lower() in headers)
    return StoredResponse(status=response.status_code, headers=kept, body=body)


def stored_body(response: HttpResponseBase, limit: int) -> bytes | None:
    """The body of ``response`` if it can be kept for replay: at most
    ``limit`` bytes, and all of them known. None otherwise."""
    if isinstance(response, HttpResponse):
        body = response.content
        return body if len(body) <= limit else None
    if isinstance(response, StreamingHttpResponse):
        return read_stream(response, limit)
    return None


def read_stream(response: StreamingHttpResponse, limit: int) -> bytes | None:
    """The whole body of a streaming response (a ``FileResponse``, say) that
    declares a ``Content-Length`` of at most ``limit`` bytes; None for any
    other stream, whose content is then left unread.

    A stream can be read once: its content is replaced by what was read,
    followed by whatever was not, so the client gets the same bytes (and the
    same error, if reading raised) as it would have. Only a stream that ended
    at exactly its declared length is kept.
    """
    length = declared_length(response)
    if response.is_async or length is None or length > limit:
        return None
    stream = cast("Iterator[bytes]", response.streaming_content)
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= length and (chunk := next(stream, None)) is not None:
            chunks.append(chunk)
            size += len(chunk)
    except Exception as error:
        response.streaming_content = _then_raise(chunks, error)
        return None
    body = b"".join(chunks)
    response.streaming_content = chain([body], stream)
    return body if size == length else None


def declared_length(response: HttpResponseBase) -> int | None:
    """The ``Content-Length`` ``response`` declares, or None."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() else None


def _then_raise(chunks: list[bytes], error: Exception) -> Iterator[bytes]:
    yield from chunks
    raise error


def replay(stored: StoredResponse, status: int | None = None) -> HttpResponse:
    """A new response equal to the stored one, marked as a replay: the
    stored body with the headers stored with it, and a ``Content-Length``
    derived from that body; with ``status`` instead of the stored one, if
    given (the ``replay_status`` option)."""
    response = HttpResponse(stored.body, status=status or stored.status)
    # HttpResponse sets a default Content-Type; the stored one, if any, wins.
    for name, value in stored.headers:
        response[name] = value
    if not any(name.lower() == "content-type" for name, _ in stored.headers):
        del response["Content-Type"]
    if has_content(response.status_code):
        response["Content-Length"] = str(len(stored.body))
    response[REPLAYED_HEADER] = "true"
    return response


def has_content(status: int) -> bool:
    """Whether a response with ``status`` has content, and so a
    ``Content-Length`` (RFC 9110 section 8.6): all but 1xx, 204 and 304."""
    return status >= 200 and status not in (204, 304)
