"""System checks for the ``IDEMPOTENCY`` setting and the configured store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from django_idempotency import conf


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001 not a dict, E002 unknown key, E003 bad value, E004 storage,
    E005 lock_timeout not below ttl, W001 safe methods in METHODS, E006
    ATOMIC with a store that cannot, W030 a store that cannot renew leases;
    then the store's own checks."""
    configured = getattr(settings, conf.SETTINGS_NAME, {})
    if not isinstance(configured, Mapping):
        return [
            Error(
                f"{conf.SETTINGS_NAME} must be a dict, not {type(configured).__name__}.",
                hint=f"Set {conf.SETTINGS_NAME} = {{'TTL': 86400, ...}} or remove it.",
                id="django_idempotency.E001",
            )
        ]
    messages: list[CheckMessage] = []
    parsed: dict[str, Any] = {}
    for name, value in configured.items():
        option = conf.OPTIONS.get(name.lower()) if isinstance(name, str) else None
        if option is None or option.setting != name:
            messages.append(
                Error(
                    f"{conf.SETTINGS_NAME} has an unknown key {name!r}.",
                    hint=conf.did_you_mean(str(name).upper(), conf.SETTING_NAMES, what="keys"),
                    id="django_idempotency.E002",
                )
            )
            continue
        try:
            parsed[option.name] = option.parse(value)
        except conf.OptionError as exc:
            messages.append(
                Error(
                    f"{conf.SETTINGS_NAME}[{name!r}] is invalid: {exc}.",
                    hint=f"See the reference of the {name} setting.",
                    id="django_idempotency.E004"
                    if option.name == "storage"
                    else "django_idempotency.E003",
                )
            )
    if messages:
        return messages
    defaults = {o.name: o.parse(o.default) for o in conf.OPTIONS.values() if o.name not in parsed}
    values = {**defaults, **parsed}
    # Without LOCK_TIMEOUT the lease is derived from TTL, and always fits it.
    misfit = (
        None
        if values["lock_timeout"] is None
        else conf.lease_problem(
            values["ttl"],
            values["lock_timeout"],
            ttl_from="setting" if "ttl" in parsed else "default",
        )
    )
    if misfit:
        messages.append(
            Error(
                f"{misfit[0]}.",
                hint=misfit[1],
                id="django_idempotency.E005",
            )
        )
    safe = [method for method in conf.SAFE_METHODS if method in values["methods"]]
    if safe:
        messages.append(safe_methods_warning(safe))
    try:
        storage = conf.get_storage(values["storage"])
    except Exception as exc:  # the store's constructor rejected its options
        messages.append(
            Error(
                f"The idempotency storage could not be created: {exc}.",
                hint="Check IDEMPOTENCY['STORAGE'] and IDEMPOTENCY['STORAGE_OPTIONS'].",
                id="django_idempotency.E004",
            )
        )
    else:
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
    if not databases:
        return []
    try:
        atomic = conf.global_options()["atomic"]
        storage = conf.get_storage()
    except Exception:  # check_settings reports it (E003, E004)
        return []
    offline = storage.check(atomic=atomic)
    return [m for m in storage.check(atomic=atomic, databases=databases) if m not in offline]


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
        hint=f"Safe methods ({', '.join(conf.SAFE_METHODS)}) change nothing, so repeating "
        "them is harmless and clients send no idempotency key with them: protecting them "
        "stores and replays their responses, and with REQUIRED refuses every such request "
        "without a key (CORS preflights, HEAD probes). Remove them from METHODS and set "
        "methods= on the few views that need it; if this is intended, add "
        "'django_idempotency.W001' to SILENCED_SYSTEM_CHECKS.",
        id="django_idempotency.W001",
    )
