"""Who and where a key belongs to: the scope keeps keys of different clients apart."""

from __future__ import annotations

import hashlib

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

ANONYMOUS = "anonymous"


def principal(request: HttpRequest) -> str:
    """Who sent the request.

    The authenticated user as ``app_label.model:pk``. Without one, the
    identity of ``request.auth``, which DRF authentication classes set (an
    API key or a client that is not a user): a model instance as
    ``app_label.model:`` and the SHA-256 of its pk, a string or bytes (a
    token) as ``auth:`` and its SHA-256; never the value itself, which may
    be the secret (an authtoken's pk is the token). Else ``anonymous``.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"{user._meta.label_lower}:{user.pk}"
    auth = getattr(request, "auth", None)
    if auth is None:
        return ANONYMOUS
    return auth_identity(auth)


def auth_identity(auth: object) -> str:
    """A stable identity for ``request.auth``; see :func:`principal`."""
    meta = getattr(auth, "_meta", None)
    if meta is not None and getattr(auth, "pk", None) is not None:
        pk = str(auth.pk).encode()  # type: ignore[attr-defined]
        return f"{meta.label_lower}:{hashlib.sha256(pk).hexdigest()}"
    if isinstance(auth, str):
        auth = auth.encode()
    if isinstance(auth, bytes):
        return "auth:" + hashlib.sha256(auth).hexdigest()
    # Anything else may print differently on each request (or the same for
    # every client); guessing would merge or split keys. Refuse, clearly.
    raise ImproperlyConfigured(
        f"The default idempotency scope cannot tell who sent the request: request.user "
        f"is anonymous and request.auth is a {type(auth).__qualname__}, which is neither "
        "a model instance nor a token string. Set the scope_func option to a function "
        "that returns the client's identity."
    )


def endpoint(request: HttpRequest) -> str:
    """The resolved URL pattern (``orders/<int:pk>/``), else the path."""
    match = request.resolver_match
    if match is not None and match.route:
        return match.route
    return request.path_info


def default_scope(request: HttpRequest) -> str:
    """The default ``scope_func``: the authenticated principal and the endpoint."""
    return f"{principal(request)}|{endpoint(request)}"


def principal_scope(request: HttpRequest) -> str:
    """A ``scope_func`` that shares keys across endpoints of one principal."""
    return principal(request)


def global_scope(request: HttpRequest) -> str:
    """A ``scope_func`` for keys unique across all clients (business ids)."""
    return "global"
