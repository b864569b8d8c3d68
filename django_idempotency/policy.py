"""The protection of one view: every option parsed, merged and checked.

A :class:`Policy` is what the engine, the key and fingerprint readers and
the adapters read; :func:`build_policy` makes one from a view's parsed
options over the parsed ``IDEMPOTENCY`` setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from django.http import HttpRequest, HttpResponseBase

from django_idempotency import conf
from django_idempotency.errors import IdempotencyError
from django_idempotency.records import StoredResponse
from django_idempotency.responses import replayable_headers
from django_idempotency.storage.base import BaseStorage
from django_idempotency.storage.configured import get_storage

KeyFunc = Callable[[HttpRequest], object]
ScopeFunc = Callable[[HttpRequest], str]
FingerprintFunc = Callable[[HttpRequest], str]
StoreIf = Callable[[HttpResponseBase], bool]
DuplicateResponse = Callable[[HttpRequest, StoredResponse], HttpResponseBase]
ErrorResponse = Callable[[HttpRequest, IdempotencyError], HttpResponseBase]


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
    #: The names of the headers stored with a body, lower-case: the safe
    #: ones and ``replay_headers`` (see :func:`.responses.replayable_headers`).
    replayable_headers: frozenset[str]

    @property
    def lock_limit(self) -> float:
        """The longest a live request keeps its key by renewing its lease:
        ``max_lock_time``, and never past the record's ``ttl``."""
        return min(self.max_lock_time, self.ttl)


def build_policy(overrides: Mapping[str, Any], label: conf.Label = conf.keyword_label) -> Policy:
    """Merge parsed per-view ``overrides`` (:func:`.conf.parse_overrides`)
    over the parsed setting; ``label`` names the view's options in errors.
    Raise ``OptionError`` for a problem of the setting, a lease that does
    not fit, or ``atomic`` with a store that cannot."""
    setting = conf.global_options()
    values = {name: setting[name] for name in conf.PER_VIEW_OPTIONS} | dict(overrides)
    values["lock_timeout"] = conf.resolve_lock_timeout(overrides, conf.read_settings(), label)
    values["storage"] = get_storage(values["storage"])
    problem = conf.atomic_problem(values["storage"]) if values["atomic"] else None
    if problem:
        raise conf.OptionError(f"{conf.SETTINGS_NAME} and idempotent() options: {problem}")
    values["header_meta"] = "HTTP_" + values["header"].upper().replace("-", "_")
    values["replayable_headers"] = replayable_headers(values["replay_headers"])
    return Policy(**values)
