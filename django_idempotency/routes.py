"""Which requests :class:`~django_idempotency.middleware.IdempotencyMiddleware`
protects: the ``PROTECTED_URLS`` setting, parsed.

Each entry names a part of the project's URLs in one of three ways:

* ``"payments:"``, ending in a colon: every URL of that namespace, and of the
  namespaces nested in it (``payments:v2:``);
* ``"payments:charge"`` or ``"charge"``: one URL, by its name, as
  ``reverse()`` takes it;
* ``"/api/"``, starting with a slash: every URL whose path starts so
  (``request.path_info``, the path URL patterns are matched against).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.http import HttpRequest


@dataclass(frozen=True)
class ProtectedUrls:
    """The parsed ``PROTECTED_URLS``: namespaces, URL names and path prefixes."""

    namespaces: tuple[str, ...] = ()
    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> ProtectedUrls:
        """Sort validated ``entries`` by their form (see the module)."""
        namespaces, names, prefixes = [], [], []
        for entry in entries:
            if entry.startswith("/"):
                prefixes.append(entry)
            elif entry.endswith(":"):
                namespaces.append(entry[:-1])
            else:
                names.append(entry)
        return cls(tuple(namespaces), frozenset(names), tuple(prefixes))

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.names or self.prefixes)

    def match(self, request: HttpRequest) -> bool:
        """Whether ``request``'s URL is one of these (its URL resolved)."""
        if self.prefixes and request.path_info.startswith(self.prefixes):
            return True
        resolved = request.resolver_match
        if resolved is None:
            return False
        if resolved.view_name in self.names:
            return True
        namespace = resolved.namespace
        return any(
            namespace == name or namespace.startswith(name + ":") for name in self.namespaces
        )


def entry_problem(entry: object) -> str | None:
    """Why ``entry`` is no entry of ``PROTECTED_URLS``, or None."""
    if not isinstance(entry, str):
        return f"{entry!r} is not a string"
    if not entry or entry != entry.strip() or " " in entry:
        return f"{entry!r} is not a namespace, a URL name or a path"
    if entry == ":" or "::" in entry or entry.startswith(":"):
        return f"{entry!r} is not a namespace ('payments:') or a URL name ('payments:charge')"
    return None
