"""Request fingerprints: a key reused with a different request is refused."""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from typing import Any

from django.http import HttpRequest
from django.utils.http import parse_header_parameters

#: Arrays and objects nested deeper than this make :func:`canonical_json`
#: treat a body as not JSON, so that it is hashed as bytes.
MAX_JSON_DEPTH = 256

#: A number whose exponent has more digits than this (leading zeros aside)
#: makes :func:`canonical_json` treat a body as not JSON.
MAX_EXPONENT_DIGITS = 100


def _digest(*parts: bytes) -> str:
    # Each part is length-prefixed, so no two different requests hash the same
    # input by moving bytes from one part to the next.
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(b"%d:" % len(part))
        hasher.update(part)
    return hasher.hexdigest()


def _utf8(text: str) -> bytes:
    # Lone surrogates, which decoded input may hold, are kept, never an error.
    return text.encode("utf-8", "surrogatepass")


def _query_string(request: HttpRequest) -> bytes:
    """The query string as the client sent it. Under WSGI, ``QUERY_STRING``
    holds its bytes decoded as latin-1 (PEP 3333). Under ASGI, Django decodes
    ``scope["query_string"]`` as UTF-8 into ``QUERY_STRING``, replacing what
    latin-1 cannot hold: the scope has the bytes."""
    scope = getattr(request, "scope", None)
    if not isinstance(scope, dict):
        query: str = request.META.get("QUERY_STRING", "")
        return query.encode("latin-1", "replace")
    raw = scope.get("query_string", b"")
    if isinstance(raw, bytes):
        return raw
    return _utf8(str(raw))  # Django's AsyncRequestFactory puts the URL's str there


def _media_type(request: HttpRequest) -> bytes:
    """The ``Content-Type``'s type/subtype and charset, case aside: a charset
    changes how the body's bytes are read; other parameters (a multipart
    boundary) do not count."""
    media_type, params = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
    charset = params.get("charset", "").lower()
    return _utf8(f"{media_type};charset={charset}" if charset else media_type)


def _head(request: HttpRequest) -> tuple[bytes, ...]:
    return (
        (request.method or "").encode(),
        _utf8(request.path),
        _query_string(request),
        _media_type(request),
    )


def _form_bytes(request: HttpRequest) -> bytes:
    """A multipart form as fingerprint input: fields, then each file's name,
    type, size and SHA-256, in a fixed order. Files are read in chunks and
    rewound, so the view reads them as usual."""
    hasher = hashlib.sha256()
    for name, values in sorted(request.POST.lists()):
        for value in values:
            hasher.update(_digest(b"field", _utf8(name), _utf8(value)).encode())
    for name, files in sorted(request.FILES.lists()):
        for upload in files:
            content = hashlib.sha256()
            for chunk in upload.chunks():
                content.update(chunk)
            upload.seek(0)
            hasher.update(
                _digest(
                    b"file",
                    _utf8(name),
                    _utf8(upload.name or ""),
                    _utf8(upload.content_type or ""),
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
    if is_multipart(request):
        return b"multipart:" + _form_bytes(request)
    return request.body


def is_multipart(request: HttpRequest) -> bool:
    """Whether the body is a multipart form, read from the ``Content-Type``
    header itself (a DRF ``Request.content_type`` holds its parameters too)."""
    media_type, _ = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
    return media_type.lower() == "multipart/form-data"


def request_fingerprint(request: HttpRequest) -> str:
    """The default: SHA-256 of the method, path, raw query string, media type
    and body bytes."""
    return _digest(*_head(request), request_body(request))


# -- JSON by value ------------------------------------------------------------------------------


class _NotCanonical(ValueError):
    """The body is not strict JSON, or is beyond the limits above."""


class _Number(str):
    """A number's canonical text: its exact value, however it was written."""


class _Members(list[tuple[str, Any]]):
    """An object's members as sent: in order, duplicate names kept."""


def _number(literal: str) -> _Number:
    """``literal`` as ``[-]digits[e<power>]``, with neither leading nor
    trailing zeros in the digits: 1, 1.0, 1e0 and 10e-1 give ``1``, 0.3
    gives ``3e-1``. A zero keeps its sign: ``0`` and ``-0``."""
    # The JSON scanner has matched -?int(.frac)?([eE][-+]?exp)?; its pure
    # Python version takes any Unicode digit for a digit.
    if not literal.isascii():
        raise _NotCanonical(literal)
    mantissa, _, exponent = literal.lower().partition("e")
    integer, _, fraction = mantissa.partition(".")
    digits = (integer + fraction).lstrip("-0")
    significant = digits.rstrip("0")
    written = _exponent(exponent) if exponent else 0
    power = written - len(fraction) + len(digits) - len(significant)
    sign = "-" if literal[0] == "-" else ""
    if not significant:
        return _Number(sign + "0")
    return _Number(f"{sign}{significant}e{power}" if power else sign + significant)


def _integer(literal: str) -> _Number:
    """:func:`_number` for an integer literal, most of which are canonical."""
    if literal.isascii() and (literal[-1] != "0" or literal in ("0", "-0")):
        return _Number(literal)
    return _number(literal)


def _exponent(text: str) -> int:
    digits = text.lstrip("-+").lstrip("0")
    if len(digits) > MAX_EXPONENT_DIGITS:
        raise _NotCanonical("exponent too long")
    value = int(digits or "0")
    return -value if text[:1] == "-" else value


_LITERALS = {True: "true", False: "false", None: "null"}


def _not_a_number(literal: str) -> Any:
    raise _NotCanonical(literal)  # NaN, Infinity, -Infinity


def _render(value: Any, out: list[str], depth: int = 0) -> None:
    """Append the canonical JSON text of the parsed ``value`` to ``out``.

    Members are sorted by name; the sort is stable, so members that share a
    name stay in the order they were sent (parsers disagree on which one
    counts). Strings are escaped to ASCII, lone surrogates included.
    """
    kind = type(value)
    if kind is _Number:
        out.append(value)
    elif kind is str:
        out.append(encode_basestring_ascii(value))
    elif kind is list or kind is _Members:
        if depth == MAX_JSON_DEPTH:
            raise _NotCanonical("nested too deeply")
        render = _render_items if kind is list else _render_members
        render(value, out, depth + 1)
    else:
        out.append(_LITERALS[value])


def _render_items(items: list[Any], out: list[str], depth: int) -> None:
    out.append("[")
    for index, item in enumerate(items):
        if index:
            out.append(",")
        _render(item, out, depth)
    out.append("]")


def _render_members(members: _Members, out: list[str], depth: int) -> None:
    out.append("{")
    for index, (name, member) in enumerate(sorted(members, key=itemgetter(0))):
        out.append(("," if index else "") + encode_basestring_ascii(name) + ":")
        _render(member, out, depth)
    out.append("}")


def canonical_json(body: bytes) -> bytes | None:
    """``body`` as canonical JSON, or None if it is not strict JSON (UTF-8
    without a byte order mark, no NaN or Infinity, nothing after the value)
    or exceeds :data:`MAX_JSON_DEPTH` or :data:`MAX_EXPONENT_DIGITS`.

    Two bodies have the same canonical JSON exactly when they hold the same
    value at full precision: only whitespace, the order of members with
    different names, escapes in strings and the way a number is written
    (``1``, ``1.0``, ``10e-1``) may differ.
    """
    try:
        document = json.loads(
            body.decode("utf-8"),
            parse_int=_integer,
            parse_float=_number,
            parse_constant=_not_a_number,
            object_pairs_hook=_Members,
        )
        out: list[str] = []
        _render(document, out)
    except (ValueError, RecursionError):
        return None
    return "".join(out).encode("ascii")


def json_fingerprint(request: HttpRequest) -> str:
    """Like the default, but JSON bodies that hold the same value have the
    same fingerprint (:func:`canonical_json`). A body that is not JSON is
    hashed as bytes, so it still never matches a different body."""
    body = request_body(request)
    canonical = canonical_json(body)
    if canonical is None:
        return _digest(*_head(request), b"raw", body)
    return _digest(*_head(request), b"json", canonical)
