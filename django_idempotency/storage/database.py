"""The database store: records in the ``IdempotencyKey`` model.

Claims are one ``INSERT ... ON CONFLICT DO NOTHING`` (``INSERT IGNORE`` on
MySQL/MariaDB, ``INSERT OR IGNORE`` on SQLite) against the unique ``digest``
column: whichever insert the database accepts first owns the key, on every
backend, across processes and machines. On PostgreSQL the same statement
reads the record a losing claim ran into. A completion and a release are
each one ``UPDATE``/``DELETE`` fenced by the owner's token. Every time is
computed by the database, so workers' clocks never matter. The SQL is
written once per database (:mod:`~django_idempotency.storage.statements`),
not compiled by the ORM per request.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished
from django.db import Error as DriverError
from django.db import connections, router, transaction
from django.db.models import DateTimeField, Func, Q
from django.db.models.sql.compiler import SQLCompiler

from django_idempotency.models import IdempotencyKey, State
from django_idempotency.records import Claim, RequestKey, StoredResponse
from django_idempotency.storage.base import (
    BaseStorage,
    PurgeResult,
    StorageError,
    StoreTransaction,
    new_token,
)
from django_idempotency.storage.statements import DIALECTS, Row, Statements, unsupported
from django_idempotency.transactions import opened_by_request, opened_by_test

#: What the database raises when it fails, or its connection does: Django's
#: ``Error``, the base of ``DatabaseError`` and of ``InterfaceError`` (a closed
#: connection, which is no ``DatabaseError``).
DB_ERRORS = (DriverError,)

#: How often a claim retries when the record it ran into vanished meanwhile.
CLAIM_ATTEMPTS = 3


class DatabaseNow(Func):
    """The database's current UTC time, for the ORM's queries (the purge):
    the clock of :data:`~django_idempotency.storage.statements.DIALECTS`."""

    template = "CURRENT_TIMESTAMP"
    output_field = DateTimeField()

    def as_sql(
        self,
        compiler: SQLCompiler,
        connection: Any,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra_context: Any,
    ) -> Any:
        dialect = DIALECTS.get(connection.vendor)
        if template is None and dialect is not None:
            # The ORM formats a template once more than a statement's SQL.
            template = dialect.now.replace("%", "%%")
        return super().as_sql(compiler, connection, function, template, arg_joiner, **extra_context)


# -- atomic mode -------------------------------------------------------------------

#: The first word of a statement that writes.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "TRUNCATE")


class WriteOutsideTransaction(ImproperlyConfigured):
    """An atomic-mode view wrote to another database than the store's: that
    write would not be part of the transaction that completes the key."""


def _refuse_writes(alias: str, store_alias: str) -> Callable[..., Any]:
    def guard(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.lstrip().split(None, 1)[0].upper() in _WRITES:
            raise WriteOutsideTransaction(
                f"An atomic idempotent view wrote to the database {alias!r}, but its key "
                f"is stored in {store_alias!r}: the write and the key cannot commit "
                "together. Store the keys in the database the view writes to "
                "(IDEMPOTENCY['STORAGE_OPTIONS'] = {'DATABASE': ...}), or do not use "
                "atomic=True for this view."
            )
        return execute(sql, params, many, context)

    return guard


class DatabaseTransaction(StoreTransaction):
    """``transaction.atomic()`` on the store's alias, opened by hand (it spans
    DRF's stages), with writes to every other alias refused meanwhile."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._stack = ExitStack()
        try:
            self._stack.enter_context(transaction.atomic(using=alias))
        except DB_ERRORS as exc:
            raise StorageError(str(exc)) from exc
        for other in connections:
            if other != alias:
                self._stack.enter_context(
                    connections[other].execute_wrapper(_refuse_writes(other, alias))
                )

    @property
    def rollback_only(self) -> bool:
        return bool(connections[self.alias].needs_rollback)

    def set_rollback_only(self) -> None:
        transaction.set_rollback(True, using=self.alias)

    def commit(self) -> None:
        try:
            self._stack.close()
        except DB_ERRORS as exc:
            raise StorageError(str(exc)) from exc

    def rollback(self, exc: BaseException | None = None) -> None:
        error = exc if exc is not None else _RolledBack()
        try:
            self._stack.__exit__(type(error), error, error.__traceback__)
        except DB_ERRORS as db_error:
            raise StorageError(str(db_error)) from db_error


class _RolledBack(Exception):
    """Handed to ``atomic.__exit__`` to roll back when nothing was raised."""


# Per thread, per alias: the second connection that commits claims and
# releases while the request's own connection is inside a transaction.
_independent = threading.local()


def _independent_connection(alias: str) -> Any:
    opened: dict[str, Any] = _independent.__dict__.setdefault("connections", {})
    connection = opened.get(alias)
    if connection is None:
        connection = opened[alias] = connections.create_connection(alias)
    return connection


def close_independent_connections(**kwargs: Any) -> None:
    """Close this thread's second connections that are broken or past
    ``CONN_MAX_AGE``, as Django does with its own at the end of a request."""
    for connection in getattr(_independent, "connections", {}).values():
        connection.close_if_unusable_or_obsolete()


request_finished.connect(close_independent_connections)


def _joins(connection: Any) -> bool:
    """Whether statements inside a transaction open on ``connection`` join it
    rather than commit on a second connection: on SQLite, and in a test case."""
    return connection.vendor == "sqlite" or opened_by_test(connection)


def _delete(queryset: Any) -> int:
    """One DELETE statement, without the transaction ``QuerySet.delete()``
    opens for its collector: the model has no relations and sends no signals."""
    return int(queryset._raw_delete(queryset.db))


class DatabaseStorage(BaseStorage):
    """Keeps records in the project's database (the default store).

    ``database`` is the alias to use; by default, where the database routers
    send writes of :class:`~django_idempotency.models.IdempotencyKey`.
    """

    supports_atomic = True

    def __init__(self, *, database: str | None = None) -> None:
        self._database = database

    @property
    def alias(self) -> str:
        return self._database or router.db_for_write(IdempotencyKey)

    # -- the contract ----------------------------------------------------------

    def claim(self, key: RequestKey, *, ttl: float, lease: float) -> Claim:
        token = new_token()
        connection, statements = self._statements()
        try:
            with connection.cursor() as cursor:
                for _attempt in range(CLAIM_ATTEMPTS):
                    cursor.execute(
                        statements.claim,
                        statements.claim_params(key, token, ttl=ttl, lease=lease),
                    )
                    if cursor.rowcount == 1:
                        return Claim(token=token)
                    found = self._read(cursor, statements, key)  # what it ran into
                    if found is not None and not found.stale(key):
                        return Claim(record=found.record())  # a duplicate: the common case
                    # Gone, expired, or an abandoned claim of this request:
                    # take it over with an UPDATE that checks the same
                    # conditions again, so that a concurrent claim or
                    # completion in between wins instead.
                    cursor.execute(
                        statements.take_over,
                        statements.take_over_params(key, token, ttl=ttl, lease=lease),
                    )
                    if cursor.rowcount == 1:
                        return Claim(token=token)
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        raise StorageError("the record kept changing while it was being claimed")

    def complete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        connection, statements = self._statements()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    statements.complete, statements.complete_params(key, token, response)
                )
                if cursor.rowcount == 1:
                    return True
                # A retry whose first attempt's reply was lost finds the key
                # completed by its own token already.
                cursor.execute(statements.completed_by, statements.completed_by_params(key, token))
                return cursor.fetchone() is not None
        except DB_ERRORS as exc:
            raise self._error(exc) from exc

    def renew(self, key: RequestKey, token: str, *, lease: float) -> bool:
        connection, statements = self._statements()
        return self._changes(
            connection, statements.renew, statements.renew_params(key, token, lease=lease)
        )

    def release(self, key: RequestKey, token: str) -> bool:
        connection, statements = self._statements()
        return self._changes(connection, statements.release, statements.owned_params(key, token))

    def begin(self) -> StoreTransaction:
        alias = self.alias
        if not connections[alias].features.supports_transactions:
            raise ImproperlyConfigured(
                f"atomic=True needs transactions, and the database {alias!r} has none "
                "(a MySQL table engine such as MyISAM): use InnoDB."
            )
        return DatabaseTransaction(alias)

    def joined_transaction(self) -> str | None:
        """Inside a transaction the request runs in, claims join it on SQLite
        (one writer: a second connection would wait for the request's own);
        elsewhere they commit at once on a second connection
        (:meth:`independent`). Inside a test case's transaction, which never
        commits, they join that one."""
        alias = self.alias
        own = connections[alias]
        return alias if own.in_atomic_block and _joins(own) else None

    @contextmanager
    def independent(self) -> Iterator[None]:
        """Inside a transaction the request runs in (``ATOMIC_REQUESTS``, or the
        view's caller's ``atomic()``), run the statements on a second
        connection to the same database, which commits them at once: concurrent
        duplicates must see the claim, a release must outlive a rollback, and a
        failed statement must not break the request's transaction.

        Where claims join the request's transaction instead
        (:meth:`joined_transaction`), the statements run in a savepoint
        of it, so that a failed one leaves the transaction usable."""
        alias = self.alias
        own = connections[alias]
        if not opened_by_request(own):
            yield
            return
        if _joins(own):
            if own.needs_rollback:
                raise StorageError("the request's transaction is being rolled back")
            try:
                with transaction.atomic(using=alias):
                    yield
            except DB_ERRORS as exc:  # the savepoint's own statements
                raise StorageError(str(exc)) from exc
            return
        connections[alias] = _independent_connection(alias)
        try:
            yield
        finally:
            connections[alias] = own

    def purge(self, *, batch_size: int, dry_run: bool = False) -> PurgeResult:
        """Delete expired records, ``batch_size`` at a time, never one with a
        live claim. Each batch is a SELECT of primary keys and a DELETE that
        checks expiry again, so a record claimed meanwhile is left alone and
        memory stays flat whatever the number of rows."""
        expired = self._manager().filter(
            Q(expires_at__lte=DatabaseNow())
            & (Q(state=State.COMPLETED) | Q(locked_until__lte=DatabaseNow()))
        )
        deleted = batches = 0
        try:
            if dry_run:
                return PurgeResult(deleted=expired.count(), batches=0)
            while True:
                pks = list(expired.order_by("pk").values_list("pk", flat=True)[:batch_size])
                if not pks:
                    break
                count = _delete(expired.filter(pk__in=pks))
                deleted += count
                batches += 1
                if len(pks) < batch_size:
                    break
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        return PurgeResult(deleted=deleted, batches=batches)

    def check(self, *, servers_only: bool = False, **kwargs: Any) -> list[checks.CheckMessage]:
        """E010, E011 and W010: the configuration only, none reaches the database."""
        if servers_only:
            return []
        if self._database is not None and self._database not in settings.DATABASES:
            return [
                checks.Error(
                    f"The idempotency storage uses the database {self._database!r}, "
                    "which is not in DATABASES.",
                    hint="Set IDEMPOTENCY['STORAGE_OPTIONS']['DATABASE'] to a DATABASES alias.",
                    id="django_idempotency.E010",
                )
            ]
        alias = self.alias
        connection = connections[alias]
        problem = unsupported(connection)
        if problem is not None:
            return [
                checks.Error(
                    problem,
                    hint="Keep the keys in one of those databases "
                    "(IDEMPOTENCY['STORAGE_OPTIONS']['DATABASE']), or use the Redis store.",
                    id="django_idempotency.E011",
                )
            ]
        atomic_requests = settings.DATABASES.get(alias, {}).get("ATOMIC_REQUESTS")
        if atomic_requests and connection.vendor == "sqlite":
            return [
                checks.Warning(
                    f"ATOMIC_REQUESTS is on for the SQLite database {alias!r} that stores "
                    "idempotency keys: SQLite has one writer, so claims join the "
                    "request's transaction and commit with it, and concurrent duplicates "
                    "wait for the first request instead of being answered.",
                    hint=(
                        "This is fine for development. In production, keep the keys in "
                        "PostgreSQL or MariaDB, where claims commit at once on a "
                        "connection of their own."
                    ),
                    id="django_idempotency.W010",
                )
            ]
        return []

    # -- statements ------------------------------------------------------------

    def _error(self, exc: Exception) -> StorageError:
        """The :class:`StorageError` for ``exc``, once the connection it broke
        (a database that went away) is closed, so that the next statement,
        such as a retry of this one, opens a new one. A connection inside a
        transaction is left for the transaction's owner to roll back."""
        connection = connections[self.alias]
        if not connection.in_atomic_block:
            with contextlib.suppress(*DB_ERRORS):
                connection.close_if_unusable_or_obsolete()
        return StorageError(str(exc))

    def _manager(self) -> Any:
        return IdempotencyKey._default_manager.using(self.alias)

    def _statements(self) -> tuple[Any, Statements]:
        """The store's connection, and the SQL for its database (built on
        first use per alias)."""
        alias = self.alias
        statements = _STATEMENTS.get(alias)
        if statements is None:
            statements = _STATEMENTS[alias] = Statements(connections[alias])
        return connections[alias], statements

    def _changes(self, connection: Any, sql: str, params: Any) -> bool:
        """Run an UPDATE or DELETE of one record: whether it changed it."""
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return bool(cursor.rowcount == 1)
        except DB_ERRORS as exc:
            raise self._error(exc) from exc

    @staticmethod
    def _read(cursor: Any, statements: Statements, key: RequestKey) -> Row | None:
        cursor.execute(statements.read, (key.digest,))
        found = cursor.fetchone()
        return Row(*found) if found is not None else None


#: The statements of each database alias, built once per process (aliases
#: and their backends do not change while it runs).
_STATEMENTS: dict[str, Statements] = {}
