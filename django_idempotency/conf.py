"""Configuration: the ``IDEMPOTENCY`` settings dict and per-view options.

Every option has one entry in :data:`OPTIONS`: its keyword name, its default
and the function that validates and normalises it. The settings dict uses the
upper-case names, the decorator the lower-case ones. Settings are read when
used, so ``override_settings`` works; the parsed result is cached until the
``setting_changed`` signal says ``IDEMPOTENCY`` changed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from django_idempotency.errors import IdempotencyError
    from django_idempotency.responses import StoredResponse
    from django_idempotency.storage.base import BaseStorage

SETTINGS_NAME = "IDEMPOTENCY"

#: The default key format: 1 to 255 printable ASCII characters.
DEFAULT_KEY_PATTERN = r"[\x20-\x7e]{1,255}"

#: Methods protected unless ``methods`` says otherwise.
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

#: The methods RFC 9110 (section 9.2.1) defines as safe: they change nothing,
#: so repeating one is harmless and keys are not meant for them (check W001).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")

#: The lease of a claim when ``lock_timeout`` is set nowhere and ``ttl`` is
#: 60 s or more (see :func:`derived_lock_timeout`).
DEFAULT_LOCK_TIMEOUT = 30.0

KeyFunc = Callable[[HttpRequest], object]
ScopeFunc = Callable[[HttpRequest], str]
FingerprintFunc = Callable[[HttpRequest], str]
StoreIf = Callable[[HttpResponseBase], bool]
DuplicateResponse = Callable[[HttpRequest, "StoredResponse"], HttpResponseBase]
ErrorResponse = Callable[[HttpRequest, "IdempotencyError"], HttpResponseBase]


class OptionError(ImproperlyConfigured, ValueError):
    """An option has a value of the wrong type or out of range."""


# -- parsers: each takes a raw value and returns the normalised one ----------


def _callable(value: Any, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise OptionError(f"cannot import {value!r}: {exc}") from exc
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
    from django_idempotency.storage.base import BaseStorage

    if value is None or isinstance(value, BaseStorage):
        return value
    if isinstance(value, str):
        try:
            cls = import_string(value)
        except ImportError as exc:
            raise OptionError(f"cannot import storage {value!r}: {exc}") from exc
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
    )
}

SETTING_NAMES = frozenset(option.setting for option in OPTIONS.values())

#: The options a view may set for itself (all but ``storage_options``).
PER_VIEW_OPTIONS = tuple(name for name, option in OPTIONS.items() if option.per_view)


@dataclass(frozen=True)
class Policy:
    """Every option of one protected view, parsed, with the storage built."""

    storage: BaseStorage
    header: str
    header_meta: str
    key_func: KeyFunc | None
    required: bool
    key_pattern: re.Pattern[str]
    methods: frozenset[str]
    scope_func: ScopeFunc
    fingerprint_func: FingerprintFunc
    ttl: float
    lock_timeout: float
    max_lock_time: float
    completion_timeout: float
    store_if: StoreIf
    on_conflict: int | Literal["wait"]
    wait_timeout: float
    replay_status: int | None
    replay_headers: tuple[str, ...]
    duplicate_response: DuplicateResponse | None
    error_response: ErrorResponse | None
    fail_open: bool
    max_body_size: int
    atomic: bool
    replayable_headers: frozenset[str] = field(default=frozenset())

    @property
    def lock_limit(self) -> float:
        """The longest a live request keeps its key by renewing its lease:
        ``max_lock_time``, and never past the record's ``ttl``."""
        return min(self.max_lock_time, self.ttl)


# -- reading the settings ------------------------------------------------------

_cache: dict[str, Any] = {}
_generation = [0]


@receiver(setting_changed)
def _reset_cache(*, setting: str, **kwargs: Any) -> None:
    if setting in (SETTINGS_NAME, "DATABASES", "CACHES"):
        _cache.clear()
        _generation[0] += 1


def generation() -> int:
    """A number that changes whenever the cached configuration is dropped."""
    return _generation[0]


def user_settings() -> Mapping[str, Any]:
    value = getattr(settings, SETTINGS_NAME, {})
    return value if isinstance(value, Mapping) else {}


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
            defaults = global_options()
        except ImproperlyConfigured:
            pass  # settings not configured yet, or invalid: the checks say so
        else:
            resolve_lock_timeout(parsed, defaults, label)
    return parsed


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
    overrides: Mapping[str, Any], defaults: Mapping[str, Any], label: Label = keyword_label
) -> float:
    """The lease of a view with the parsed ``overrides`` over the parsed
    settings ``defaults``: the ``lock_timeout`` set for the view or in the
    setting, else :func:`derived_lock_timeout`. Raise ``OptionError`` if
    one is set and does not fit ``ttl``."""
    ttl = overrides["ttl"] if "ttl" in overrides else defaults["ttl"]
    value = overrides["lock_timeout"] if "lock_timeout" in overrides else defaults["lock_timeout"]
    if value is None:
        return derived_lock_timeout(ttl)
    ttl_from: Origin = (
        "view"
        if "ttl" in overrides
        else "setting"
        if OPTIONS["ttl"].setting in user_settings()
        else "default"
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
        raise OptionError("{}. {}".format(*problem))
    return float(value)


def atomic_problem(storage: BaseStorage) -> str | None:
    """Why ``atomic=True`` cannot work with ``storage``, or None."""
    if not storage.supports_atomic:
        return (
            f"atomic=True commits the view's writes and the key in one database "
            f"transaction, which {type(storage).__name__} cannot take part in; "
            "use DatabaseStorage on the view's database"
        )
    return None


def global_options() -> dict[str, Any]:
    """The parsed settings dict, defaults filled in; cached."""
    cached = _cache.get("global")
    if cached is None:
        configured = user_settings()
        cached = {}
        for option in OPTIONS.values():
            raw = configured.get(option.setting, option.default)
            try:
                cached[option.name] = option.parse(raw)
            except OptionError as exc:
                raise OptionError(f"{SETTINGS_NAME}[{option.setting!r}]: {exc}") from None
        _cache["global"] = cached
    return cached


def get_storage(spec: Any = None) -> BaseStorage:
    """The storage for ``spec``: an instance, a dotted path, or None for the default."""
    from django_idempotency.storage.base import BaseStorage

    if isinstance(spec, BaseStorage):
        return spec
    options = global_options()
    path = OPTIONS["storage"].parse(spec) or options["storage"]
    if isinstance(path, BaseStorage):
        return path
    cache_key = f"storage:{path}"
    storage = _cache.get(cache_key)
    if storage is None:
        cls = import_string(path)
        kwargs = options["storage_options"] if path == options["storage"] else {}
        storage = cls(**{name.lower(): value for name, value in kwargs.items()})
        _cache[cache_key] = storage
    return storage  # type: ignore[no-any-return]


def build_policy(overrides: Mapping[str, Any], label: Label = keyword_label) -> Policy:
    """Merge parsed per-view overrides over the parsed settings; ``label``
    names the view's options in errors, as in :func:`parse_overrides`."""
    defaults = global_options()
    values = {**defaults, **overrides}
    values["lock_timeout"] = resolve_lock_timeout(overrides, defaults, label)
    values.pop("storage_options")
    values["storage"] = get_storage(values["storage"])
    problem = atomic_problem(values["storage"]) if values["atomic"] else None
    if problem:
        raise OptionError(f"{SETTINGS_NAME} and idempotent() options: {problem}")
    header = values["header"]
    values["header_meta"] = "HTTP_" + header.upper().replace("-", "_")
    values["replayable_headers"] = frozenset(
        name.lower() for name in (*SAFE_REPLAY_HEADERS, *values["replay_headers"])
    )
    return Policy(**values)


#: Response headers stored with the body and replayed with it, always (the
#: ``replay_headers`` option adds to them). A replay must give back the same
#: representation: the bytes and every header that says what they are, so
#: that a client or cache reads them as it read the first answer. Hence:
#:
#: * RFC 9110's representation metadata (section 8.3-8.7): ``Content-Type``,
#:   ``Content-Encoding`` (a gzip body without it cannot be decoded),
#:   ``Content-Language``, ``Content-Location``; and its validators (section
#:   8.8): ``ETag``, ``Last-Modified``.
#: * What else describes the stored bytes: ``Content-Disposition`` (RFC 6266,
#:   how to save them), ``Content-Range`` (RFC 9110 section 14.4, which part
#:   a 206 holds), ``Content-Digest`` and ``Repr-Digest`` (RFC 9530, digests
#:   of them), and ``Vary`` (RFC 9110 section 12.5.5, which request headers
#:   chose this representation, without which a cache may serve it to a
#:   client that cannot read it).
#: * What the request produced: ``Location`` and ``Link``.
#:
#: Headers of one exchange are never on it: ``Date``, ``Set-Cookie``,
#: ``Cache-Control``, ``Expires``, ``Age``, request ids, authentication
#: challenges. Middleware adds its own headers to a replay as to any response.
SAFE_REPLAY_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Content-Language",
    "Content-Location",
    "ETag",
    "Last-Modified",
    "Content-Disposition",
    "Content-Range",
    "Content-Digest",
    "Repr-Digest",
    "Vary",
    "Location",
    "Link",
)

#: Never stored, even if ``replay_headers`` names them: ``Content-Length``
#: frames one message and is derived from the replayed body (it changes when
#: middleware compresses a replay); a raw ``Set-Cookie`` belongs to the
#: client of the first exchange.
NEVER_REPLAYED_HEADERS = frozenset({"content-length", "set-cookie"})
