"""Stored responses: what is kept of a view's response, and how it is replayed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.http import HttpResponse, HttpResponseBase

from django_idempotency.conf import Policy

REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class StoredResponse:
    """A response as stored: status, replayable headers and body.

    ``replayable`` is False when the response was streamed or larger than
    ``max_body_size``: then only its status is kept, and duplicates are told
    that the first request was processed but cannot be replayed.
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
    """What to store of ``response`` under ``policy``."""
    if response.streaming or not isinstance(response, HttpResponse):
        return StoredResponse(status=response.status_code, replayable=False)
    body = response.content
    if len(body) > policy.max_body_size:
        return StoredResponse(status=response.status_code, replayable=False)
    headers = tuple(
        (name, value)
        for name, value in response.items()
        if name.lower() in policy.replayable_headers
    )
    return StoredResponse(status=response.status_code, headers=headers, body=body)


def replay(stored: StoredResponse, policy: Policy) -> HttpResponse:
    """A new response equal to the stored one, marked as a replay."""
    response = HttpResponse(stored.body, status=policy.replay_status or stored.status)
    # HttpResponse sets a default Content-Type; the stored one, if any, wins.
    for name, value in stored.headers:
        response[name] = value
    if not any(name.lower() == "content-type" for name, _ in stored.headers):
        del response["Content-Type"]
    response[REPLAYED_HEADER] = "true"
    return response
