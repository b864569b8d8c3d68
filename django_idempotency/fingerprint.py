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


def _form_bytes(request: HttpRequest) -> bytes:
    """A multipart form as fingerprint input: fields, then each file's name,
    type, size and SHA-256, in a fixed order. Files are read in chunks and
    rewound, so the view reads them as usual."""
    hasher = hashlib.sha256()
    for name, values in sorted(request.POST.lists()):
        for value in values:
            hasher.update(_digest(b"field", name.encode(), value.encode()).encode())
    for name, files in sorted(request.FILES.lists()):
        for upload in files:
            content = hashlib.sha256()
            for chunk in upload.chunks():
                content.update(chunk)
            upload.seek(0)
            hasher.update(
                _digest(
                    b"file",
                    name.encode(),
                    (upload.name or "").encode(),
                    (upload.content_type or "").encode(),
                    b"%d" % (upload.size or 0),
                    content.digest(),
                ).encode()
            )
    return hasher.digest()


def request_body(request: HttpRequest) -> bytes:
    """The body as fingerprint input.

    Multipart bodies are taken as parsed fields and files: their raw bytes
    hold a random boundary, may be larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE``
    (uploads are streamed to disk), and are gone once ``request.POST`` was
    read, as ``CsrfViewMiddleware`` does before the view.
    """
    if request.content_type == "multipart/form-data":
        return b"multipart:" + _form_bytes(request)
    return request.body


def request_fingerprint(request: HttpRequest) -> str:
    """The default: SHA-256 of the method, path, query string and body bytes."""
    return _digest(*_head(request), request_body(request))


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
    body = request_body(request)
    canonical = canonical_json(body)
    if canonical is None:
        return _digest(*_head(request), b"raw", body)
    return _digest(*_head(request), b"json", canonical)
