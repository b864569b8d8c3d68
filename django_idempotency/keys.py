"""Reading the idempotency key from a request and validating it."""

from __future__ import annotations

import re

from django.http import HttpRequest

from django_idempotency.errors import KeyInvalid
from django_idempotency.policy import Policy

#: No valid key is longer than this in its raw form (255 characters, each
#: possibly escaped, plus quotes and whitespace). Longer values are refused
#: before any parsing.
MAX_RAW_LENGTH = 1024

#: The longest key stored, whatever ``key_pattern`` allows.
MAX_KEY_LENGTH = 255

# An RFC 8941 sf-string: printable ASCII between double quotes, where only
# ``\"`` and ``\\`` are escapes.
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_SF_UNESCAPE = re.compile(r"\\([\"\\])")


def parse_header_value(raw: str) -> str:
    """The key in a header value: a quoted Structured-Field string or a bare token.

    Raise :class:`KeyInvalid` for a value that is neither, such as two keys
    joined by a comma (the header sent twice) or a string with bad escapes.
    """
    if len(raw) > MAX_RAW_LENGTH:
        raise KeyInvalid("The idempotency key is too long.")
    value = raw.strip(" \t")
    if value.startswith('"'):
        match = _SF_STRING.fullmatch(value)
        if match is None:
            raise KeyInvalid("The idempotency key is not a valid quoted string.")
        return _SF_UNESCAPE.sub(r"\1", match.group(1))
    if "," in value:
        raise KeyInvalid("Send exactly one idempotency key.")
    return value


def get_key(request: HttpRequest, policy: Policy) -> str | None:
    """The validated key of ``request``, or None when it carries none."""
    if policy.key_func is not None:
        value = policy.key_func(request)
        if value is None or value == "":
            return None
        # A business id may be a number in a JSON body; compare it as text.
        key = value if isinstance(value, str) else str(value)
        if len(key) > MAX_RAW_LENGTH:
            raise KeyInvalid("The idempotency key is too long.")
    else:
        raw = request.META.get(policy.header_meta)
        if raw is None:
            return None
        key = parse_header_value(raw)
    if len(key) > MAX_KEY_LENGTH:
        raise KeyInvalid(f"The idempotency key is longer than {MAX_KEY_LENGTH} characters.")
    if policy.key_pattern.fullmatch(key) is None:
        raise KeyInvalid("The idempotency key does not have the expected format.")
    return key
