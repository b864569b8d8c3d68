"""Stored responses: what is kept of a view's response, and how it is replayed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import cast

from django.http import HttpResponse, HttpResponseBase, StreamingHttpResponse

from django_idempotency.conf import NEVER_REPLAYED_HEADERS, Policy

REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class StoredResponse:
    """A response as stored: status, body and the headers that describe it.

    ``replayable`` is False when the body could not be kept whole (larger
    than ``max_body_size``, or a stream of unknown length): then only its
    status is kept, and duplicates are told that the first request was
    processed but cannot be replayed.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    replayable: bool = True


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


def capture(response: HttpResponseBase, policy: Policy) -> StoredResponse:
    """What to store of ``response`` under ``policy``: its status, and its
    body with the headers that describe it, or no body at all (not replayable).

    The body and its headers are taken together here and nowhere else, so a
    body is never stored without, say, its ``Content-Encoding``.
    """
    body = stored_body(response, policy.max_body_size)
    if body is None:
        return StoredResponse(status=response.status_code, replayable=False)
    return StoredResponse(
        status=response.status_code, headers=replayed_headers(response, policy), body=body
    )


def replayed_headers(response: HttpResponseBase, policy: Policy) -> tuple[tuple[str, str], ...]:
    """The headers of ``response`` stored with its body: those ``policy``
    replays, as the view set them (see ``SAFE_REPLAY_HEADERS``)."""
    names = policy.replayable_headers - NEVER_REPLAYED_HEADERS
    return tuple((name, value) for name, value in response.items() if name.lower() in names)


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


def replay(stored: StoredResponse, policy: Policy) -> HttpResponse:
    """A new response equal to the stored one, marked as a replay: the
    stored body with the headers stored with it, and a ``Content-Length``
    derived from that body."""
    response = HttpResponse(stored.body, status=policy.replay_status or stored.status)
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
