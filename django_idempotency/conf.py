"""Configuration: the ``IDEMPOTENCY`` settings dict and per-view options.

Every option has one entry in :data:`OPTIONS`: its keyword name, its default
and the function that validates and normalises it. The settings dict uses the
upper-case names, the decorator the lower-case ones.

The setting has one parser, :func:`read_settings`: it returns the parsed
values and every problem found, as :class:`Problem` objects. The system
checks report those problems; the engine raises them
(:func:`global_options`). Settings are read when used, so
``override_settings`` works; the parsed result is cached until the
``setting_changed`` signal says ``IDEMPOTENCY`` changed.

The one rule between options, a lease below the record's ``ttl``, is
:func:`lease_problem`, applied to the setting here and to each view's
options by :func:`resolve_lock_timeout`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_idempotency.routes import ProtectedUrls, entry_problem
from django_idempotency.storage.base import BaseStorage

SETTINGS_NAME = "IDEMPOTENCY"

#: The default key format: 1 to 255 printable ASCII characters.
DEFAULT_KEY_PATTERN = r"[\x20-\x7e]{1,255}"

#: Methods protected unless ``methods`` says otherwise.
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

#: The lease of a claim when ``lock_timeout`` is set nowhere and ``ttl`` is
#: 60 s or more (see :func:`derived_lock_timeout`).
DEFAULT_LOCK_TIMEOUT = 30.0


class OptionError(ImproperlyConfigured, ValueError):
    """An option has a value of the wrong type or out of range."""


# -- parsers: each takes a raw value and returns the normalised one ----------


def _imported(path: str, what: str = "") -> Any:
    """What the dotted ``path`` names; ``what`` says what it should be."""
    try:
        return import_string(path)
    except ImportError as exc:
        raise OptionError(f"cannot import {what}{path!r}: {exc}") from exc


def _callable(value: Any, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, str):
        value = _imported(value)
    if not callable(value):
        raise OptionError(f"expected a callable or a dotted path, got {value!r}")
    return value


def _optional_callable(value: Any) -> Any:
    return _callable(value, optional=True)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"expected True or False, got {value!r}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(f"expected seconds (a number) or a timedelta, got {value!r}")
    if value <= 0:
        raise OptionError(f"expected a positive duration, got {value!r}")
    return float(value)


def _optional_seconds(value: Any) -> float | None:
    return None if value is None else _seconds(value)


def _status_in(value: Any, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _status(value: Any) -> int:
    if not _status_in(value, 100, 599):
        raise OptionError(f"expected an HTTP status code, got {value!r}")
    return int(value)


def _optional_status(value: Any) -> int | None:
    return None if value is None else _status(value)


def _header(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9-]+", value):
        raise OptionError(f"expected a header name such as 'Idempotency-Key', got {value!r}")
    return value


def _key_pattern(value: Any) -> re.Pattern[str]:
    if value is None:
        value = DEFAULT_KEY_PATTERN
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise OptionError(f"expected a regular expression, got {value!r}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise OptionError(f"invalid regular expression {value!r}: {exc}") from exc


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise OptionError(f"expected a list of names, got {value!r}")
    names = tuple(value)
    if not all(isinstance(name, str) and name for name in names):
        raise OptionError(f"expected a list of names, got {value!r}")
    return names


def _methods(value: Any) -> frozenset[str]:
    return frozenset(name.upper() for name in _names(value))


def _on_conflict(value: Any) -> int | Literal["wait"]:
    if value == "wait":
        return "wait"
    if not _status_in(value, 400, 599):
        raise OptionError(
            f"expected an HTTP error status (such as 409 or 423) or 'wait', got {value!r}"
        )
    return int(value)


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OptionError(f"expected a size in bytes, got {value!r}")
    return value


def _storage(value: Any) -> Any:
    if value is None or isinstance(value, BaseStorage):
        return value
    if isinstance(value, str):
        cls = _imported(value, "storage ")
        if not (isinstance(cls, type) and issubclass(cls, BaseStorage)):
            raise OptionError(f"{value!r} is not a subclass of BaseStorage")
        return value
    raise OptionError(
        f"expected a dotted path to a storage class or a storage instance, got {value!r}"
    )


def _storage_options(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise OptionError(f"expected a dict of keyword arguments, got {value!r}")
    return dict(value)


def _protected_urls(value: Any) -> ProtectedUrls:
    if isinstance(value, ProtectedUrls):
        return value
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise OptionError(
            "expected a list of namespaces ('payments:'), URL names ('payments:charge') "
            f"and paths ('/api/'), got {value!r}"
        )
    entries = tuple(value)
    for entry in entries:
        problem = entry_problem(entry)
        if problem:
            raise OptionError(problem)
    return ProtectedUrls.from_entries(entries)


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    per_view: bool = True

    @property
    def setting(self) -> str:
        return self.name.upper()


OPTIONS: dict[str, Option] = {
    option.name: option
    for option in (
        Option("storage", "django_idempotency.storage.DatabaseStorage", _storage),
        Option("storage_options", {}, _storage_options, per_view=False),
        Option("header", "Idempotency-Key", _header),
        Option("key_func", None, _optional_callable),
        Option("required", False, _bool),
        Option("key_pattern", None, _key_pattern),
        Option("methods", UNSAFE_METHODS, _methods),
        Option("scope_func", "django_idempotency.scope.default_scope", _callable),
        Option("fingerprint_func", "django_idempotency.fingerprint.request_fingerprint", _callable),
        Option("ttl", 24 * 60 * 60, _seconds),
        # None: derived from ttl (derived_lock_timeout), wherever it is not set.
        Option("lock_timeout", None, _optional_seconds),
        Option("max_lock_time", 5 * 60, _seconds),
        Option("completion_timeout", 10, _seconds),
        Option("store_if", "django_idempotency.responses.store_if_not_server_error", _callable),
        Option("on_conflict", 409, _on_conflict),
        Option("wait_timeout", 10, _seconds),
        Option("replay_status", None, _optional_status),
        Option("replay_headers", (), _names),
        Option("duplicate_response", None, _optional_callable),
        Option("error_response", None, _optional_callable),
        Option("fail_open", False, _bool),
        Option("max_body_size", 1024 * 1024, _size),
        Option("atomic", False, _bool),
        # What IdempotencyMiddleware protects: nothing unless set.
        Option("protected_urls", (), _protected_urls, per_view=False),
    )
}

SETTING_NAMES = frozenset(option.setting for option in OPTIONS.values())

#: The options a view may set for itself (all but ``storage_options`` and
#: ``protected_urls``).
PER_VIEW_OPTIONS = tuple(name for name, option in OPTIONS.items() if option.per_view)


# -- the cache of everything read from settings ---------------------------------

_cache: dict[str, Any] = {}
_generation = [0]

T = TypeVar("T")


@receiver(setting_changed)
def _reset_cache(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTINGS_NAME, "DATABASES", "CACHES"):
        _cache.clear()
        _generation[0] += 1


def generation() -> int:
    """A number that changes whenever the cached configuration is dropped."""
    return _generation[0]


def cached(name: str, build: Callable[[], T]) -> T:
    """The value cached as ``name``, built by ``build()`` the first time:
    dropped with everything else read from settings when they change (the
    parsed setting, and the stores built from it)."""
    try:
        value: T = _cache[name]
    except KeyError:
        value = _cache[name] = build()
    return value


def keyword_label(name: str) -> str:
    """How the decorator spells option ``name`` in error messages."""
    return f"idempotent({name}=...)"


Label = Callable[[str], str]


def did_you_mean(
    name: str, known: Iterable[str], spell: Label = repr, *, what: str = "names"
) -> str:
    """The help for a misspelt ``name``: the closest of ``known``, as
    ``spell`` writes it (``Did you mean 'TTL'?``), or else all of them.

    The one place that suggests names: the settings check (``E002``), the
    decorator's keywords and the DRF mixin's attributes all use it."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"Did you mean {spell(close[0])}?"
    return f"Known {what}: {', '.join(names)}."


def unknown_option(name: str, label: Label = keyword_label) -> str:
    """The message for ``name``, which is no per-view option; ``label``
    names an option as the adapter spells it (see :func:`parse_overrides`)."""
    option = OPTIONS.get(name)
    if option is not None and not option.per_view:
        return (
            f"{label(name)}: {name!r} cannot be set per view, only in the "
            f"{SETTINGS_NAME} setting, as {option.setting!r}"
        )
    hint = did_you_mean(name.lower(), PER_VIEW_OPTIONS, label, what="options")
    return f"{label(name)}: there is no per-view option {name!r}. {hint}"


# -- the setting ---------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """What is wrong with the ``IDEMPOTENCY`` setting: the message and hint
    of a system check (``id``, such as ``"django_idempotency.E003"``), and
    of the ``OptionError`` the engine raises when a view is used."""

    id: str
    message: str
    hint: str

    def error(self) -> OptionError:
        return OptionError(f"{self.message} {self.hint}")


@dataclass(frozen=True)
class Settings:
    """The parsed ``IDEMPOTENCY`` setting: ``values`` of every option (the
    default where the setting has none, or an invalid one), the names of
    the options it sets, and its ``problems``."""

    values: Mapping[str, Any]
    configured: frozenset[str]
    problems: tuple[Problem, ...]


def read_settings() -> Settings:
    """The ``IDEMPOTENCY`` setting, parsed once (until it changes): the one
    parser of the setting, for the checks and the engine alike."""
    return cached("settings", lambda: parse_settings(getattr(settings, SETTINGS_NAME, {})))


def parse_settings(configured: object) -> Settings:
    """Parse ``configured``, the value of the ``IDEMPOTENCY`` setting.

    Problems: ``E001`` not a dict, ``E002`` an unknown key, ``E003`` an
    invalid value (``E004`` for ``STORAGE``), and, when none of those,
    ``E005``: a ``LOCK_TIMEOUT`` that does not fit ``TTL``."""
    defaults = {option.name: option.parse(option.default) for option in OPTIONS.values()}
    if not isinstance(configured, Mapping):
        problem = Problem(
            "django_idempotency.E001",
            f"{SETTINGS_NAME} must be a dict, not {type(configured).__name__}.",
            f"Set {SETTINGS_NAME} = {{'TTL': 86400, ...}} or remove it.",
        )
        return Settings(defaults, frozenset(), (problem,))
    parsed: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in configured.items():
        option = OPTIONS.get(name.lower()) if isinstance(name, str) else None
        if option is None or option.setting != name:
            hint = did_you_mean(str(name).upper(), SETTING_NAMES, what="keys")
            problems.append(
                Problem(
                    "django_idempotency.E002", f"{SETTINGS_NAME} has an unknown key {name!r}.", hint
                )
            )
            continue
        try:
            parsed[option.name] = option.parse(value)
        except OptionError as exc:
            problems.append(
                Problem(
                    "django_idempotency.E004"
                    if option.name == "storage"
                    else "django_idempotency.E003",
                    f"{SETTINGS_NAME}[{name!r}] is invalid: {exc}.",
                    f"See the reference of the {name} setting.",
                )
            )
    result = Settings({**defaults, **parsed}, frozenset(parsed), tuple(problems))
    if not problems:
        try:
            resolve_lock_timeout({}, result)
        except LeaseError as exc:
            problem, hint = exc.args
            problems.append(Problem("django_idempotency.E005", f"{problem}.", hint))
            result = Settings(result.values, result.configured, tuple(problems))
    return result


def global_options() -> Mapping[str, Any]:
    """The parsed setting, defaults filled in; raise ``OptionError`` with
    the first of its problems, if it has any."""
    parsed = read_settings()
    if parsed.problems:
        raise parsed.problems[0].error()
    return parsed.values


# -- per-view options ----------------------------------------------------------


def parse_overrides(overrides: Mapping[str, Any], label: Label = keyword_label) -> dict[str, Any]:
    """Validate per-view options; raise ``TypeError`` or ``OptionError``.

    ``label`` names an option in error messages, as the adapter spells it
    (``idempotent(ttl=...)``, ``OrderViewSet.idempotency_ttl``)."""
    parsed: dict[str, Any] = {}
    for name, value in overrides.items():
        option = OPTIONS.get(name)
        if option is None or not option.per_view:
            raise TypeError(unknown_option(name, label))
        try:
            parsed[name] = option.parse(value)
        except OptionError as exc:
            raise OptionError(f"{label(name)}: {exc}") from None
    if "ttl" in parsed or "lock_timeout" in parsed:
        # Checked again when the view is used, since settings may change.
        try:
            setting = read_settings()
        except ImproperlyConfigured:
            pass  # settings not configured yet: the checks say so
        else:
            if not setting.problems:  # else the checks and the engine say so
                resolve_lock_timeout(parsed, setting, label)
    return parsed


# -- the lease: the one rule between options --------------------------------------


def derived_lock_timeout(ttl: float) -> float:
    """The lease of a claim whose ``lock_timeout`` is set nowhere: 30 s, or
    half the ``ttl`` when that is shorter (a ``ttl`` under a minute).

    Why half: a claim may not outlive the record it claims, so the lease
    must be below ``ttl``, and half is, whatever ``ttl``. It leaves room to
    renew: a lease is renewed after a third of it, never to end past ``ttl``
    (the cap on ``max_lock_time``), so with half the first renewal, at a
    sixth of ``ttl``, extends it to two thirds and a slow view keeps its key
    up to ``ttl`` as it does with a long ``ttl`` (a lease above three
    quarters of ``ttl`` could never be renewed). It keeps retries after a
    dead worker waiting at most half of the time the key is remembered,
    while a shorter share would renew more often and let a retry in after a
    shorter store outage. And every ``ttl`` of a minute or more keeps the
    30 s of before: only configurations that used to be refused change."""
    return min(DEFAULT_LOCK_TIMEOUT, ttl / 2)


#: Where the value of an option came from: the view's own options, the
#: ``IDEMPOTENCY`` setting, or the option's default.
Origin = Literal["view", "setting", "default"]


def lease_problem(
    ttl: float,
    lock_timeout: float,
    *,
    ttl_from: Origin = "setting",
    lock_timeout_from: Origin = "setting",
    setting_has_lock_timeout: bool = True,
    label: Label = keyword_label,
) -> tuple[str, str] | None:
    """Why ``lock_timeout`` does not fit ``ttl`` (a claim may not outlive the
    record it claims) and what to set instead, or None. The ``*_from``
    arguments say where each value came from, ``setting_has_lock_timeout``
    whether the setting has a ``LOCK_TIMEOUT`` a view's would fall back to,
    ``label`` how the view spells its options."""
    if lock_timeout < ttl:
        return None

    def named(name: str, origin: Origin, value: float) -> str:
        if origin == "view":
            return f"{label(name)} ({value:g} s, set on the view)"
        if origin == "setting":
            return f"{SETTINGS_NAME}[{name.upper()!r}] ({value:g} s, set in the setting)"
        return f"{name.upper()} ({value:g} s, the default)"

    problem = (
        f"{named('lock_timeout', lock_timeout_from, lock_timeout)} must be below "
        f"{named('ttl', ttl_from, ttl)}: a claim cannot outlive the record it claims"
    )
    example = f"below {ttl:g} s (for example to {derived_lock_timeout(ttl):g})"
    derived = f"derived from ttl (the smaller of {DEFAULT_LOCK_TIMEOUT:g} s and half the ttl)"
    if lock_timeout_from == "view":
        unset = "set it to None" if setting_has_lock_timeout else "remove it"
        fix = f"Set {label('lock_timeout')} {example}, or {unset} to have it {derived}."
    elif ttl_from == "view":
        fix = (
            f"Set {label('lock_timeout')} too, {example}, or remove LOCK_TIMEOUT from "
            f"the {SETTINGS_NAME} setting to have the lease of each view {derived}."
        )
    else:
        derived = f"derived from TTL (the smaller of {DEFAULT_LOCK_TIMEOUT:g} s and half the TTL)"
        fix = f"Set {SETTINGS_NAME}['LOCK_TIMEOUT'] {example}, or remove it to have it {derived}."
    return problem, fix


def resolve_lock_timeout(
    overrides: Mapping[str, Any], setting: Settings, label: Label = keyword_label
) -> float:
    """The lease of a view with the parsed ``overrides`` over the parsed
    ``setting``: the ``lock_timeout`` set for the view or in the setting,
    else :func:`derived_lock_timeout`. Raise ``OptionError`` (its two
    arguments: the problem and the fix) if one is set and does not fit
    ``ttl``."""
    defaults = setting.values
    ttl = overrides["ttl"] if "ttl" in overrides else defaults["ttl"]
    value = overrides["lock_timeout"] if "lock_timeout" in overrides else defaults["lock_timeout"]
    if value is None:
        return derived_lock_timeout(ttl)
    ttl_from: Origin = (
        "view" if "ttl" in overrides else "setting" if "ttl" in setting.configured else "default"
    )
    problem = lease_problem(
        ttl,
        value,
        ttl_from=ttl_from,
        lock_timeout_from="view" if "lock_timeout" in overrides else "setting",
        setting_has_lock_timeout=defaults["lock_timeout"] is not None,
        label=label,
    )
    if problem:
        raise LeaseError(*problem)
    return float(value)


class LeaseError(OptionError):
    """A ``lock_timeout`` that does not fit ``ttl``: the problem, and the fix."""

    def __str__(self) -> str:
        return "{}. {}".format(*self.args)


def atomic_problem(storage: BaseStorage) -> str | None:
    """Why ``atomic=True`` cannot work with ``storage``, or None."""
    if not storage.supports_atomic:
        return (
            f"atomic=True commits the view's writes and the key in one database "
            f"transaction, which {type(storage).__name__} cannot take part in; "
            "use DatabaseStorage on the view's database"
        )
    return None
