"""System checks for the ``IDEMPOTENCY`` setting and the configured store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.utils.module_loading import import_string

from django_idempotency import conf
from django_idempotency.middleware import IdempotencyMiddleware
from django_idempotency.storage.configured import get_storage

#: The methods RFC 9110 (section 9.2.1) defines as safe: they change nothing,
#: so repeating one is harmless and keys are not meant for them (W001).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The problems of the setting (:func:`.conf.parse_settings`: E001 to
    E005); when it has none, W001 safe methods in METHODS, E004 a store
    that cannot be built, E006 ATOMIC with a store that cannot, W030 a store
    that cannot renew leases, and the store's own checks."""
    setting = conf.read_settings()
    if setting.problems:
        return [Error(p.message, hint=p.hint, id=p.id) for p in setting.problems]
    values = setting.values
    messages: list[CheckMessage] = []
    safe = [method for method in SAFE_METHODS if method in values["methods"]]
    if safe:
        messages.append(safe_methods_warning(safe))
    try:
        storage = get_storage()
    except Exception as exc:  # the store's constructor rejected its options
        messages.append(
            Error(
                f"The idempotency storage could not be created: {exc}.",
                hint="Check IDEMPOTENCY['STORAGE'] and IDEMPOTENCY['STORAGE_OPTIONS'].",
                id="django_idempotency.E004",
            )
        )
        return messages
    problem = conf.atomic_problem(storage) if values["atomic"] else None
    if problem:
        messages.append(
            Error(
                f"{conf.SETTINGS_NAME}['ATOMIC']: {problem}.",
                hint="Turn ATOMIC off, or keep the keys in the view's database.",
                id="django_idempotency.E006",
            )
        )
    if not storage.renews_leases:
        messages.append(
            Warning(
                f"The idempotency storage {type(storage).__name__} does not implement "
                "renew(): a claim is kept for one LOCK_TIMEOUT only, so a view that "
                "runs longer than that may run again for a retry.",
                hint="Implement BaseStorage.renew() in the store (see the storage "
                "reference), or set LOCK_TIMEOUT above the slowest run of a view.",
                id="django_idempotency.W030",
            )
        )
    # Given no databases, the store's checks reach no server: those that
    # do run in check_storage_servers().
    messages.extend(storage.check(atomic=values["atomic"]))
    return messages


@register(Tags.database)
def check_storage_servers(
    app_configs: Any = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The store's checks that reach its servers (W023 for Redis), which
    run as Django's database checks do: only when the checks are given
    databases (``check --database``, ``migrate``). Django 6.1 leaves out the
    database-tagged checks when none are given, but gives the other checks
    every alias; Django 5.2 and 6.0 run every check, with ``databases=None``."""
    setting = conf.read_settings()
    if not databases or setting.problems:  # check_settings reports those
        return []
    try:
        storage = get_storage()
    except Exception:  # check_settings reports it (E004)
        return []
    return storage.check(atomic=setting.values["atomic"], databases=databases, servers_only=True)


def safe_methods_warning(methods: list[str]) -> Warning:
    """W001: ``METHODS`` protects safe methods. Only the setting is checked:
    ``methods=`` on a view is a choice made for that view."""
    if len(methods) == 1:
        names, plural = methods[0], ""
    else:
        names, plural = f"{', '.join(methods[:-1])} and {methods[-1]}", "s"
    return Warning(
        f"{conf.SETTINGS_NAME}['METHODS'] protects the safe method{plural} {names} on every "
        "protected view that does not set its own methods.",
        hint=f"Safe methods ({', '.join(SAFE_METHODS)}) change nothing, so repeating "
        "them is harmless and clients send no idempotency key with them: protecting them "
        "stores and replays their responses, and with REQUIRED refuses every such request "
        "without a key (CORS preflights, HEAD probes). Remove them from METHODS and set "
        "methods= on the few views that need it; if this is intended, add "
        "'django_idempotency.W001' to SILENCED_SYSTEM_CHECKS.",
        id="django_idempotency.W001",
    )


@register(Tags.compatibility)
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``IdempotencyMiddleware`` and ``PROTECTED_URLS``: E040 a middleware
    whose ``process_view()`` comes after it, W040 ``PROTECTED_URLS`` without
    the middleware, W042 a middleware whose ``process_exception()`` it
    bypasses. The middleware without ``PROTECTED_URLS`` protects nothing, as
    documented: a project may leave the list empty where it runs."""
    setting = conf.read_settings()
    if setting.problems:  # check_settings reports those
        return []
    urls = setting.values["protected_urls"]
    classes = [(path, _imported(path)) for path in getattr(settings, "MIDDLEWARE", None) or ()]
    ours = [i for i, (_, cls) in enumerate(classes) if _is_ours(cls)]
    if not ours:
        if not urls:
            return []
        return [
            Warning(
                f"{conf.SETTINGS_NAME}['PROTECTED_URLS'] is set, but IdempotencyMiddleware "
                "is not in MIDDLEWARE: the URLs it names are not protected.",
                hint=f"Add {_MIDDLEWARE!r} at the end of MIDDLEWARE.",
                id="django_idempotency.W040",
            )
        ]
    messages: list[CheckMessage] = []
    after = [path for path, cls in classes[ours[0] + 1 :] if hasattr(cls, "process_view")]
    if after:
        messages.append(
            Error(
                f"IdempotencyMiddleware comes before {_listed(after)} in MIDDLEWARE, whose "
                "process_view() would then not run for the requests it protects: it calls "
                "their views itself.",
                hint=f"Move {_MIDDLEWARE!r} after {_listed(after)}, to the end of MIDDLEWARE.",
                id="django_idempotency.E040",
            )
        )
    catching = [path for path, cls in classes if hasattr(cls, "process_exception")]
    if catching:
        messages.append(
            Warning(
                f"The process_exception() of {_listed(catching)} does not see the "
                "exceptions raised by the views IdempotencyMiddleware protects: they go "
                "to Django's own handling (handler404, handler500, got_request_exception).",
                hint="Protect the views whose exceptions it must see with @idempotent "
                "(the middleware leaves them to it), or add 'django_idempotency.W042' to "
                "SILENCED_SYSTEM_CHECKS.",
                id="django_idempotency.W042",
            )
        )
    return messages


_MIDDLEWARE = "django_idempotency.middleware.IdempotencyMiddleware"


def _imported(path: str) -> Any:
    """The middleware at ``path``, or None where it does not import (Django
    says so when it loads the middleware)."""
    try:
        return import_string(path)
    except ImportError:
        return None


def _is_ours(middleware: Any) -> bool:
    return isinstance(middleware, type) and issubclass(middleware, IdempotencyMiddleware)


def _listed(paths: list[str]) -> str:
    names = [p.rsplit(".", 1)[-1] for p in paths]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
