"""Who and where a key belongs to: the scope keeps keys of different clients apart."""

from __future__ import annotations

from django.http import HttpRequest

ANONYMOUS = "anonymous"


def principal(request: HttpRequest) -> str:
    """The authenticated user as ``app_label.model:pk``, or ``anonymous``."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return ANONYMOUS
    return f"{user._meta.label_lower}:{user.pk}"


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
