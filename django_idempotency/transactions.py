"""The database transactions a protected view runs inside.

A view may run inside a transaction it did not open: ``ATOMIC_REQUESTS``
wraps every sync view in one per database, and a caller may wrap it in
``atomic()``. Its writes then commit only after the view has returned, or
not at all. The engine asks this module whether that is so, so that a key is
completed only once the view's writes have committed (:func:`after_commit`),
and a successful response is never sent for writes that will be rolled back
(:func:`rolled_back`).

A test case's transaction (Django's ``TestCase``, pytest-django's
``django_db``) never commits; it is told apart by Django's own marker on its
atomic blocks, and treated as no transaction at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from django.db import connections, transaction


def atomic_requests() -> bool:
    """Whether a database wraps each request in a transaction (its
    ``ATOMIC_REQUESTS``), whose rollback may undo what a view answered."""
    return any(database.get("ATOMIC_REQUESTS") for database in connections.settings.values())


def opened_by_test(connection: Any) -> bool:
    """Whether a test case's transaction is open on ``connection``."""
    return any(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


def opened_by_request(connection: Any) -> bool:
    """Whether the request runs inside a transaction on ``connection`` that
    a test case did not open (``ATOMIC_REQUESTS``, or a caller's ``atomic()``)."""
    return bool(connection.in_atomic_block) and not all(
        getattr(block, "_from_testcase", False) for block in connection.atomic_blocks
    )


def inside() -> list[Any]:
    """The connections on which the request runs inside a transaction now
    (any atomic block, a test case's too): one look at every connection, to
    hand to :func:`rolled_back` and :func:`after_commit`, which ask of the
    same moment."""
    return [c for c in connections.all(initialized_only=True) if c.in_atomic_block]


def rolled_back(open_now: Sequence[Any] | None = None, *, using: str | None = None) -> bool:
    """Whether a transaction the request runs inside (on the alias ``using``,
    or on any) is marked to be rolled back: a failed statement, or Django
    REST framework answering an exception under ``ATOMIC_REQUESTS``. What
    was written there is lost. ``open_now`` is :func:`inside`, if known."""
    return any(
        connection.needs_rollback
        for connection in (inside() if open_now is None else open_now)
        if using is None or connection.alias == using
    )


def after_commit(callback: Callable[[], None], open_now: Sequence[Any]) -> bool:
    """Call ``callback`` once every transaction the request runs inside
    (``open_now``, from :func:`inside`) has committed, and never if one rolls
    back; False, without calling it, when the request runs inside none (the
    caller goes on at once)."""
    waiting = {
        connection.alias
        for connection in open_now
        if opened_by_request(connection) and not opened_by_test(connection)
    }
    if not waiting:
        return False

    def committed(alias: str) -> None:
        waiting.discard(alias)
        if not waiting:
            callback()

    for alias in tuple(waiting):
        transaction.on_commit(partial(committed, alias), using=alias)
    return True
