"""The store a view uses: :func:`get_storage`."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string

from django_idempotency import conf
from django_idempotency.storage.base import BaseStorage


def get_storage(spec: Any = None) -> BaseStorage:
    """The store for ``spec``: an instance, a dotted path to a store class,
    or None for the ``STORAGE`` setting.

    A store named by its path is built once (until settings change), with
    ``STORAGE_OPTIONS`` when it is the one the setting names, and shared by
    every view that names it."""
    if isinstance(spec, BaseStorage):
        return spec
    setting = conf.global_options()
    path = conf.OPTIONS["storage"].parse(spec) or setting["storage"]
    if isinstance(path, BaseStorage):
        return path

    def build() -> BaseStorage:
        cls = import_string(path)
        options = setting["storage_options"] if path == setting["storage"] else {}
        store: BaseStorage = cls(**{name.lower(): value for name, value in options.items()})
        return store

    return conf.cached(f"storage:{path}", build)
