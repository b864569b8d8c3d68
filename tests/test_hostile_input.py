"""Hostile and malformed requests, sent over real sockets to a gunicorn pool.

The test client cannot send what these send: a header line repeated, raw
bytes that are not ASCII, control characters, a megabyte-long header, a body
past Django's limit. Whatever arrives, the answer is never a 5xx, the view
does not run for a request it must refuse, and nothing is stored for it.
(The parser and the fingerprint are also tested property-based, with
hypothesis, in ``test_keys.py`` and ``test_fingerprint.py``.)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import servers
from django.db import connection

from demo.models import Order
from django_idempotency.models import IdempotencyKey

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

BODY = b'{"item": "tea", "quantity": 1}'


@pytest.fixture(scope="module")
def pool(django_db_setup: None, django_db_blocker: Any) -> Iterator[servers.Server]:
    if connection.vendor == "sqlite":
        pytest.skip("these tests run against server databases (PostgreSQL, MariaDB)")
    server = servers.start(connection.settings_dict["NAME"], workers=2, threads=2)
    yield server
    server.stop()
    server.cleanup()


def raw_post(server: servers.Server, key_lines: list[bytes], body: bytes = BODY) -> int:
    """POST /orders/ with the given raw ``Idempotency-Key`` header lines (the
    value bytes as they are); return the status, or 0 if the connection was
    closed without one."""
    head = [
        b"POST /orders/ HTTP/1.1",
        f"Host: {server.host}:{server.port}".encode(),
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
        b"Connection: close",
        *(b"Idempotency-Key: " + value for value in key_lines),
    ]
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    status_line = received.split(b"\r\n", 1)[0].split()
    return int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0


HOSTILE_KEYS = {
    "empty": [b""],
    "only spaces": [b"   "],
    "256 characters": [b"k" * 256],
    "10 KB": [b"k" * 10_000],
    "1 MB": [b"k" * 1_000_000],
    "control character": [b"order\x01one"],
    "non-ASCII bytes": ["commande-été".encode()],
    "invalid UTF-8": [b"order-\xff\xfe"],
    "bad escape in a quoted string": [b'"order\\q"'],
    "unterminated quoted string": [b'"order-1'],
    "two keys in one line": [b"order-1, order-2"],
    "the header twice": [b"order-1", b"order-2"],
    "the same key twice": [b"order-1", b"order-1"],
}


@pytest.mark.parametrize("lines", list(HOSTILE_KEYS.values()), ids=list(HOSTILE_KEYS))
def test_hostile_keys_are_refused_without_a_server_error(
    pool: servers.Server, lines: list[bytes]
) -> None:
    status = raw_post(pool, lines)

    assert 400 <= status < 500, f"answered {status}"
    assert not Order.objects.exists(), "the view ran for a refused key"
    assert not IdempotencyKey.objects.exists()


def test_body_past_djangos_limit_is_refused_without_a_server_error(pool: servers.Server) -> None:
    status = raw_post(pool, [b"big-body"], body=b'{"item": "' + b"x" * 3_000_000 + b'"}')

    assert 400 <= status < 500, f"answered {status}"
    assert not Order.objects.exists()


def test_a_valid_key_still_works_after_all_that(pool: servers.Server) -> None:
    assert raw_post(pool, [b"order-after-abuse"]) == 201
    assert raw_post(pool, [b"order-after-abuse"]) == 201
    assert Order.objects.count() == 1
