"""Assertions for your own tests: your endpoints are idempotent.

Three checks, each a function that raises ``AssertionError`` with what was
expected and what came back, for pytest or any test runner:

* :func:`assert_replays`: a retry gets the first answer, byte for byte;
* :func:`assert_refuses_changed_body`: the key reused with another body is
  refused;
* :func:`assert_runs_once`: concurrent duplicates sent to a live server run
  the endpoint once.

:class:`IdempotencyAssertions` gives them to Django's ``TestCase`` and
``LiveServerTestCase`` as ``assertReplays``, ``assertRefusesChangedBody`` and
``assertRunsOnce``. The first two take a test client (Django's ``Client``
or ``AsyncClient``, DRF's ``APIClient``), called from a sync test; the
requests go through the whole of Django, URL resolution and middleware
included.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import async_to_sync

from django_idempotency.responses import REPLAYED_HEADER

__all__ = [
    "Answer",
    "IdempotencyAssertions",
    "assert_refuses_changed_body",
    "assert_replays",
    "assert_runs_once",
]

#: The header the checks send the key in, unless told another.
KEY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Answer:
    """One response, as the checks compare them."""

    status: int
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)

    @classmethod
    def of(cls, response: Any) -> Answer:
        """The answer of a test client's response."""
        if getattr(response, "streaming", False):
            body = b"".join(response.streaming_content)
        else:
            body = response.content
        return cls(response.status_code, dict(response.headers.items()), body)

    @property
    def replayed(self) -> bool:
        """Whether it carries ``Idempotent-Replayed: true``."""
        return _header(self.headers, REPLAYED_HEADER) == "true"

    def describe(self) -> str:
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
        content_type = _header(self.headers, "Content-Type") or "no Content-Type"
        replayed = f", {REPLAYED_HEADER}: true" if self.replayed else ""
        return f"{self.status}, {content_type}{replayed}, {len(self.body)} bytes: {body!r}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lower), None)


def _new_key() -> str:
    return f"test-{uuid.uuid4().hex}"


def _encode(data: Any, content_type: str) -> Any:
    """``data`` as the body: bytes and strings as they are; anything else as
    JSON for a JSON content type, as a URL-encoded form for
    ``application/x-www-form-urlencoded`` (a multipart form is left to the
    test client, which encodes it)."""
    if isinstance(data, bytes | str):
        return data
    if "json" in content_type:
        return json.dumps(data)
    if content_type.startswith("application/x-www-form-urlencoded"):
        return urlencode(data, doseq=True)
    return data


def _send(
    client: Any,
    path: str,
    data: Any,
    *,
    method: str,
    key: str,
    key_header: str,
    headers: Mapping[str, str] | None,
    content_type: str,
) -> Answer:
    all_headers = {**(headers or {}), key_header: key}
    send = getattr(client, method.lower())
    if method.lower() in ("get", "head", "options"):
        response = send(path, data, headers=all_headers)
    else:
        body = _encode(data, content_type) if data is not None else ""
        response = send(path, body, content_type=content_type, headers=all_headers)
    if inspect.isawaitable(response):  # Django's AsyncClient
        response = async_to_sync(_awaited)(response)
    return Answer.of(response)


async def _awaited(response: Awaitable[Any]) -> Any:
    return await response


def _sender(
    client: Any,
    path: str,
    method: str,
    key: str | None,
    key_header: str,
    headers: Mapping[str, str] | None,
    content_type: str,
) -> tuple[Callable[[Any], Answer], str]:
    """A function that sends data to ``path`` with one key (``key``, or a
    new one), and the line that describes its requests in failures."""
    key = key or _new_key()
    send = partial(
        _send,
        client,
        path,
        method=method,
        key=key,
        key_header=key_header,
        headers=headers,
        content_type=content_type,
    )
    return send, _request_line(method, path, key_header, key)


def _request_line(method: str, path: str, key_header: str, key: str) -> str:
    return f"  request: {method.upper()} {path} with {key_header}: {key}"


def _first_must_be_kept(first: Answer, request: str, what: str) -> None:
    if first.status >= 500:
        raise AssertionError(
            f"{what}: the first request failed, so its key was released and there is "
            f"no answer to compare with.\n{request}\n  first: {first.describe()}"
        )


def assert_replays(
    client: Any,
    path: str,
    data: Any = None,
    *,
    method: str = "post",
    key: str | None = None,
    key_header: str = KEY_HEADER,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    status: int | None = None,
    replayed_header: bool = True,
) -> tuple[Answer, Answer]:
    """Send the request twice with one key, and assert that the second gets
    the first's answer back: the same status (or ``status``, for a
    ``replay_status``), the same ``Content-Type`` and the same body, byte
    for byte, marked ``Idempotent-Replayed: true`` (unless
    ``replayed_header`` is False, for a ``duplicate_response`` of your
    own). ``data`` is sent as JSON unless it is bytes or a string, or
    ``content_type`` is not JSON; a new key is made unless ``key`` is given.
    Returns both answers."""
    send, request = _sender(client, path, method, key, key_header, headers, content_type)
    first = send(data)
    _first_must_be_kept(first, request, "Cannot check the replay")
    retry = send(data)
    problems = []
    expected_status = first.status if status is None else status
    if retry.status != expected_status:
        problems.append(f"its status is {retry.status}, not {expected_status}")
    if retry.body != first.body:
        problems.append("its body differs")
    if _header(retry.headers, "Content-Type") != _header(first.headers, "Content-Type"):
        problems.append("its Content-Type differs")
    if replayed_header and not retry.replayed:
        problems.append(f"it has no {REPLAYED_HEADER}: true")
    if problems:
        hint = ""
        if not retry.replayed and retry.body != first.body:
            hint = (
                "\n  The view seems to have run again: is the URL protected, and the "
                "method one of METHODS?"
            )
        raise AssertionError(
            f"The retry did not replay the first answer: {'; '.join(problems)}.\n"
            f"{request}\n  first: {first.describe()}\n  retry: {retry.describe()}{hint}"
        )
    return first, retry


def assert_refuses_changed_body(
    client: Any,
    path: str,
    data: Any,
    changed: Any,
    *,
    method: str = "post",
    key: str | None = None,
    key_header: str = KEY_HEADER,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    status: int = 422,
) -> tuple[Answer, Answer]:
    """Send ``data``, then ``changed`` with the same key, and assert that the
    second is refused with ``status`` (422 by default, as the package
    answers a key reused with another request). Returns both answers."""
    send, request = _sender(client, path, method, key, key_header, headers, content_type)
    first = send(data)
    _first_must_be_kept(first, request, "Cannot check the refusal")
    refused = send(changed)
    if refused.status != status:
        hint = ""
        if refused.replayed:
            hint = "\n  It was replayed: the fingerprint does not see the change."
        elif refused.status < 400:
            hint = "\n  The view seems to have run again with the other body."
        raise AssertionError(
            f"The key reused with another body was not refused with {status}.\n{request}\n"
            f"  first:   {first.describe()}\n  changed: {refused.describe()}{hint}"
        )
    return first, refused


def assert_runs_once(
    url: str,
    data: Any = None,
    *,
    count: Callable[[], int],
    duplicates: int = 10,
    method: str = "POST",
    key: str | None = None,
    key_header: str = KEY_HEADER,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    conflict_statuses: tuple[int, ...] = (409,),
    timeout: float = 30.0,
) -> list[Answer]:
    """Send ``duplicates`` identical requests at once to ``url`` (on a live
    server: pytest-django's ``live_server.url`` or a ``LiveServerTestCase``'s
    ``live_server_url``, plus the path), and assert that the endpoint ran
    once: ``count()``, how many times its effect happened (such as
    ``Order.objects.count``), grew by exactly one.

    A duplicate answered as in flight (a status of ``conflict_statuses``)
    is sent again, after its ``Retry-After`` (at most a second), until it
    gets another answer or ``timeout`` passes, as a client would. Then
    exactly one answer must be the first (not replayed), and every other
    one its replay: the same status and body. Returns the final answers."""
    key = key or _new_key()
    body = None if data is None else _encode(data, content_type)
    if isinstance(body, str):
        body = body.encode()
    all_headers = {"Content-Type": content_type, **(headers or {}), key_header: key}

    def send() -> Answer:
        request = urllib.request.Request(url, data=body, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, dict(response.headers.items()), response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers.items()), error.read())

    before = count()
    answers: list[Answer | BaseException | None] = [None] * duplicates
    start = threading.Barrier(duplicates)
    deadline = time.monotonic() + timeout

    def duplicate(index: int) -> None:
        try:
            start.wait(timeout)
            answer = send()
            while answer.status in conflict_statuses and time.monotonic() < deadline:
                time.sleep(_retry_after(answer))
                answer = send()
            answers[index] = answer
        except BaseException as exc:  # reported below, in the test's thread
            answers[index] = exc

    threads = [threading.Thread(target=duplicate, args=(i,)) for i in range(duplicates)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [a for a in answers if not isinstance(a, Answer)]
    if failed:
        raise AssertionError(f"A duplicate could not be sent to {url}: {failed[0]!r}")
    final = [a for a in answers if isinstance(a, Answer)]
    ran = count() - before
    request = _request_line(method, url, key_header, key)
    originals = [a for a in final if not a.replayed]
    problems = []
    if ran != 1:
        problems.append(f"it ran {ran} times (count() went from {before} to {before + ran})")
    if len(originals) != 1:
        problems.append(f"{len(originals)} answers are not replays, not 1")
    elif any(a.status != originals[0].status or a.body != originals[0].body for a in final):
        problems.append("some replays differ from the first answer")
    if problems:
        tally = Counter(
            f"{a.status}{' (replayed)' if a.replayed else ''}" for a in final
        ).most_common()
        summary = ", ".join(f"{answer} x{times}" for answer, times in tally)
        first = f"\n  first: {originals[0].describe()}" if originals else ""
        raise AssertionError(
            f"{duplicates} concurrent duplicates should run the endpoint once: "
            f"{'; '.join(problems)}.\n{request}\n  answers: {summary}{first}"
        )
    return final


def _retry_after(answer: Answer) -> float:
    value = _header(answer.headers, "Retry-After") or ""
    seconds = float(value) if value.replace(".", "", 1).isdigit() else 0.1
    return min(max(seconds, 0.05), 1.0)


class IdempotencyAssertions:
    """The checks as assertion methods of a Django ``TestCase``,
    ``TransactionTestCase`` or ``LiveServerTestCase``: mix it in first.

    ``assertReplays`` and ``assertRefusesChangedBody`` use ``self.client``;
    ``assertRunsOnce`` takes a path on ``self.live_server_url``."""

    client: Any
    live_server_url: str

    def assertReplays(self, path: str, data: Any = None, **options: Any) -> tuple[Answer, Answer]:
        return assert_replays(self.client, path, data, **options)

    def assertRefusesChangedBody(
        self, path: str, data: Any, changed: Any, **options: Any
    ) -> tuple[Answer, Answer]:
        return assert_refuses_changed_body(self.client, path, data, changed, **options)

    def assertRunsOnce(
        self, path: str, data: Any = None, *, count: Callable[[], int], **options: Any
    ) -> list[Answer]:
        return assert_runs_once(self.live_server_url + path, data, count=count, **options)
