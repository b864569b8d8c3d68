"""Request fingerprints: a key reused with a different request is refused."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.http import HttpRequest


def _digest(*parts: bytes) -> str:
    # Each part is length-prefixed, so no two different requests hash the same
    # input by moving bytes from one part to the next.
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(b"%d:" % len(part))
        hasher.update(part)
    return hasher.hexdigest()


def _head(request: HttpRequest) -> tuple[bytes, bytes, bytes]:
    return (
        (request.method or "").encode(),
        request.path.encode(),
        request.META.get("QUERY_STRING", "").encode("latin-1", "replace"),
    )


def request_fingerprint(request: HttpRequest) -> str:
    """The default: SHA-256 of the method, path, query string and body bytes."""
    return _digest(*_head(request), request.body)


def canonical_json(body: bytes) -> bytes | None:
    """``body`` as canonical JSON (sorted keys, no whitespace), or None if not JSON."""
    try:
        document: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_fingerprint(request: HttpRequest) -> str:
    """Like the default, but JSON bodies that differ only in key order or
    whitespace have the same fingerprint. A body that is not JSON is hashed as
    bytes, so it still never matches a different body."""
    body = request.body
    canonical = canonical_json(body)
    if canonical is None:
        return _digest(*_head(request), b"raw", body)
    return _digest(*_head(request), b"json", canonical)
