"""The database store: records in the ``IdempotencyKey`` model.

Claims are one ``INSERT ... ON CONFLICT DO NOTHING`` (``INSERT IGNORE`` on
MySQL/MariaDB, ``INSERT OR IGNORE`` on SQLite) against the unique ``digest``
column: whichever insert the database accepts first owns the key, on every
backend, across processes and machines. A completion and a release are each
one ``UPDATE``/``DELETE`` fenced by the owner's token. Every time is computed
by the database (:class:`DatabaseNow`), so workers' clocks never matter.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished
from django.db import Error as DriverError
from django.db import connections, router, transaction
from django.db.models import (
    BooleanField,
    DateTimeField,
    Expression,
    ExpressionWrapper,
    Func,
    Q,
    Value,
)
from django.db.models.constants import OnConflict
from django.db.models.expressions import CombinedExpression
from django.db.models.sql import InsertQuery
from django.db.models.sql.compiler import SQLCompiler

from django_idempotency.models import IdempotencyKey, State
from django_idempotency.responses import StoredResponse
from django_idempotency.storage.base import (
    BaseStorage,
    Claim,
    PurgeResult,
    Record,
    RequestKey,
    StorageError,
    StoreTransaction,
)
from django_idempotency.transactions import opened_by_request, opened_by_test

#: What the database raises when it fails, or its connection does: Django's
#: ``Error``, the base of ``DatabaseError`` and of ``InterfaceError`` (a closed
#: connection, which is no ``DatabaseError``).
DB_ERRORS = (DriverError,)

#: How often a claim retries when the record it ran into vanished meanwhile.
CLAIM_ATTEMPTS = 3


class DatabaseNow(Func):
    """The database's current UTC time, with sub-second precision."""

    template = "CURRENT_TIMESTAMP"
    output_field = DateTimeField()

    def as_postgresql(self, compiler: SQLCompiler, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="STATEMENT_TIMESTAMP()", **extra)

    def as_mysql(self, compiler: SQLCompiler, connection: Any, **extra: Any) -> Any:
        # CURRENT_TIMESTAMP is in the session's time zone; Django stores UTC.
        return self.as_sql(compiler, connection, template="UTC_TIMESTAMP(6)", **extra)

    def as_sqlite(self, compiler: SQLCompiler, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="STRFTIME('%%%%Y-%%%%m-%%%%d %%%%H:%%%%M:%%%%f', 'NOW')",
            **extra,
        )


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


def _now_plus(seconds: float) -> Expression:
    return CombinedExpression(
        DatabaseNow(), "+", Value(timedelta(seconds=seconds)), output_field=DateTimeField()
    )


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
        token = uuid.uuid4().hex
        try:
            for _attempt in range(CLAIM_ATTEMPTS):
                if self._insert(key, token, ttl=ttl, lease=lease):
                    return Claim(token=token)
                # The digest exists. Read it: a live record (the common case,
                # a duplicate) is the answer, in two statements in all.
                record, lapsed = self._live_record(key)
                stale = record is None or (
                    lapsed
                    and record.state == "in_progress"
                    and record.fingerprint == key.fingerprint
                )
                if not stale:
                    return Claim(record=record)
                # Expired, or an abandoned claim of this request: take it over
                # with an UPDATE that checks the same conditions again, so a
                # concurrent claim or completion in between wins instead.
                if self._take_over(key, token, ttl=ttl, lease=lease):
                    return Claim(token=token)
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        raise StorageError("the record kept changing while it was being claimed")

    def complete(self, key: RequestKey, token: str, response: StoredResponse) -> bool:
        try:
            updated = self._owned(key, token).update(
                state=State.COMPLETED,
                locked_until=None,
                response_status=response.status,
                response_headers=[list(pair) for pair in response.headers],
                response_body=response.body,
                replayable=response.replayable,
            )
            # A retry whose first attempt's reply was lost finds the key
            # completed by its own token already.
            done = updated == 1 or (
                self._manager()
                .filter(digest=key.digest, owner=token, state=State.COMPLETED)
                .exists()
            )
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        return bool(done)

    def renew(self, key: RequestKey, token: str, *, lease: float) -> bool:
        try:
            updated = self._owned(key, token).update(locked_until=_now_plus(lease))
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        return bool(updated == 1)

    def release(self, key: RequestKey, token: str) -> bool:
        try:
            deleted = _delete(self._owned(key, token))
        except DB_ERRORS as exc:
            raise self._error(exc) from exc
        return bool(deleted == 1)

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

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
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
        if (
            settings.DATABASES.get(alias, {}).get("ATOMIC_REQUESTS")
            and connections[alias].vendor == "sqlite"
        ):
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

    def _owned(self, key: RequestKey, token: str) -> Any:
        return self._manager().filter(digest=key.digest, owner=token, state=State.IN_PROGRESS)

    def _claim_values(
        self, key: RequestKey, token: str, *, ttl: float, lease: float
    ) -> dict[str, Any]:
        return {
            "scope": key.scope,
            "key": key.key,
            "fingerprint": key.fingerprint,
            "state": State.IN_PROGRESS,
            "owner": token,
            "locked_until": _now_plus(lease),
            "response_status": None,
            "response_headers": None,
            "response_body": None,
            "replayable": True,
            "created_at": DatabaseNow(),
            "expires_at": _now_plus(ttl),
        }

    def _insert(self, key: RequestKey, token: str, *, ttl: float, lease: float) -> bool:
        """INSERT unless the digest exists; True if this row went in."""
        row = IdempotencyKey(
            digest=key.digest, **self._claim_values(key, token, ttl=ttl, lease=lease)
        )
        fields = [f for f in IdempotencyKey._meta.concrete_fields if not f.primary_key]
        query = InsertQuery(IdempotencyKey, on_conflict=OnConflict.IGNORE)
        query.insert_values(fields, [row])
        alias = self.alias
        compiler = query.get_compiler(using=alias)
        with connections[alias].cursor() as cursor:
            for sql, params in compiler.as_sql():
                cursor.execute(sql, params)
            return bool(cursor.rowcount == 1)

    def _take_over(self, key: RequestKey, token: str, *, ttl: float, lease: float) -> bool:
        """Claim an expired record, or an abandoned claim of the same request."""
        now = DatabaseNow()
        stale = Q(expires_at__lte=now) | Q(
            state=State.IN_PROGRESS, locked_until__lte=now, fingerprint=key.fingerprint
        )
        updated = (
            self._manager()
            .filter(stale, digest=key.digest)
            .update(**self._claim_values(key, token, ttl=ttl, lease=lease))
        )
        return bool(updated == 1)

    def _live_record(self, key: RequestKey) -> tuple[Record | None, bool]:
        """The record unless it expired, and whether its lease has lapsed."""
        rows = list(
            self._manager()
            .filter(digest=key.digest, expires_at__gt=DatabaseNow())
            .annotate(
                lapsed=ExpressionWrapper(
                    Q(locked_until__lte=DatabaseNow()), output_field=BooleanField()
                )
            )
            .values_list(
                "state",
                "fingerprint",
                "response_status",
                "response_headers",
                "response_body",
                "replayable",
                "lapsed",
            )[:1]
        )
        if not rows:
            return None, False
        state, fingerprint, status, headers, body, replayable, lapsed = rows[0]
        response = None
        if state == State.COMPLETED:
            response = StoredResponse(
                status=status,
                headers=tuple((name, value) for name, value in headers or ()),
                body=bytes(body or b""),
                replayable=replayable,
            )
        return Record(state=state, fingerprint=fingerprint, response=response), bool(lapsed)
