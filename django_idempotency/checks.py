"""System checks for the ``IDEMPOTENCY`` setting and the configured store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from django_idempotency import conf
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
