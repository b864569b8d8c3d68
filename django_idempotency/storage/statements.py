"""The database store's SQL, written once per database and process.

The ORM would compile every claim and completion anew on every request (about
0.35 ms of CPU for the two, more than the package's own Python). These
statements are built once per database alias, from the table and column names
of :class:`~django_idempotency.models.IdempotencyKey` as the database quotes
them, and only their parameters change per request.

Every time is the database's own: ``now`` and ``now + n seconds`` are
expressions of each backend's clock (:data:`DIALECTS`), so workers' clocks
never matter.

A claim is an ``INSERT`` that does nothing where the key exists, then, only
if it did nothing, a read of the record it ran into. On PostgreSQL the two
can be one statement (a ``WITH`` around the ``INSERT`` and a ``UNION`` with
the read); measured, that statement costs the server about 1.7 times the
plain ``INSERT`` on every fresh key (planning it alone costs five times as
much), to save a round trip on duplicates only. Fresh keys are the common
case, so the claim is the plain ``INSERT`` on every database
(``docs/explanation/performance.rst``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

from django.core.exceptions import ImproperlyConfigured

from django_idempotency.models import IdempotencyKey, State
from django_idempotency.records import Record, RequestKey, StoredResponse
from django_idempotency.records import State as RecordState


@dataclass(frozen=True)
class Dialect:
    """How one database backend says what the statements need."""

    #: The current UTC time, fixed for the statement.
    now: str
    #: The current UTC time plus a duration, given as the one parameter.
    later: str
    #: The parameter of :attr:`later` for a number of seconds.
    duration: Callable[[float], Any]
    #: An ``INSERT`` that does nothing where the digest exists:
    #: ``{table}``, ``{columns}`` and ``{values}`` are filled in.
    insert_ignore: str


#: The backends the database store supports, by Django's ``vendor``. SQLite's
#: ``'now'`` has millisecond precision, and ``%`` is doubled: Django turns
#: ``%s`` into SQLite's ``?`` and ``%%`` back into ``%``.
DIALECTS = {
    "postgresql": Dialect(
        now="STATEMENT_TIMESTAMP()",
        later="(STATEMENT_TIMESTAMP() + %s)",
        duration=lambda seconds: timedelta(seconds=seconds),
        insert_ignore="INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING",
    ),
    "mysql": Dialect(
        # CURRENT_TIMESTAMP is in the session's time zone; Django stores UTC.
        now="UTC_TIMESTAMP(6)",
        later="(UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND)",
        duration=lambda seconds: round(seconds * 1_000_000),
        insert_ignore="INSERT IGNORE INTO {table} ({columns}) VALUES ({values})",
    ),
    "sqlite": Dialect(
        now="STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW')",
        later="STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW', %s)",
        duration=lambda seconds: f"{seconds:+.6f} seconds",
        insert_ignore="INSERT OR IGNORE INTO {table} ({columns}) VALUES ({values})",
    ),
}


class Row(NamedTuple):
    """A record as a claim reads it: its columns, and two facts the database
    computes by its own clock."""

    state: str
    fingerprint: str
    status: int | None
    headers: Any
    body: Any
    replayable: Any
    expired: Any
    lapsed: Any

    def record(self) -> Record:
        response = None
        if self.state == State.COMPLETED:
            headers = self.headers
            if isinstance(headers, str | bytes):  # how Django's drivers hand JSON over
                headers = json.loads(headers)
            assert self.status is not None
            response = StoredResponse(
                status=self.status,
                headers=tuple((name, value) for name, value in headers or ()),
                body=bytes(self.body or b""),
                replayable=bool(self.replayable),
            )
        state: RecordState = "completed" if response is not None else "in_progress"
        return Record(state=state, fingerprint=self.fingerprint, response=response)

    def stale(self, key: RequestKey) -> bool:
        """Whether a claim may take the record over: it expired, or it is an
        abandoned claim (its lease lapsed) of the same request."""
        return bool(self.expired) or (
            bool(self.lapsed)
            and self.state == State.IN_PROGRESS
            and self.fingerprint == key.fingerprint
        )


#: The columns a claim writes, in the order of :meth:`Statements.claim_params`.
_CLAIM_COLUMNS = (
    "digest",
    "scope",
    "key",
    "fingerprint",
    "state",
    "owner",
    "locked_until",
    "response_status",
    "response_headers",
    "response_body",
    "replayable",
    "created_at",
    "expires_at",
)
#: What a claim reads of the record it ran into (:class:`Row`, less two facts).
_RECORD_COLUMNS = (
    "state",
    "fingerprint",
    "response_status",
    "response_headers",
    "response_body",
    "replayable",
)


def unsupported(connection: Any) -> str | None:
    """Why the store has no statements for ``connection``'s backend, if it has none."""
    if connection.vendor in DIALECTS:
        return None
    return (
        f"The idempotency database store supports PostgreSQL, MySQL/MariaDB and "
        f"SQLite; the database {connection.alias!r} is {connection.vendor!r}."
    )


class Statements:
    """The SQL of every operation of the database store, for one connection's
    backend; each method returns the parameters its statement takes."""

    def __init__(self, connection: Any) -> None:
        problem = unsupported(connection)
        if problem is not None:
            raise ImproperlyConfigured(problem)
        self.dialect = dialect = DIALECTS[connection.vendor]
        self.json = connection.ops.adapt_json_value
        meta = IdempotencyKey._meta
        columns = {field.name: field.column for field in meta.concrete_fields}

        def column(name: str) -> str:
            return str(connection.ops.quote_name(columns[name]))

        table = connection.ops.quote_name(meta.db_table)
        now, later = dialect.now, dialect.later
        owned = f"{column('digest')} = %s AND {column('owner')} = %s AND {column('state')} = %s"
        # A claim's values, with the lease and the expiry as durations.
        values = ["%s"] * 6 + [later, "NULL", "NULL", "NULL", "TRUE", now, later]
        self.claim = dialect.insert_ignore.format(
            table=table, columns=", ".join(map(column, _CLAIM_COLUMNS)), values=", ".join(values)
        )
        facts = f"{column('expires_at')} <= {now}, {column('locked_until')} <= {now}"
        record = ", ".join(map(column, _RECORD_COLUMNS))
        self.read = f"SELECT {record}, {facts} FROM {table} WHERE {column('digest')} = %s"
        assignments = ", ".join(
            f"{column(name)} = {value}"
            for name, value in zip(_CLAIM_COLUMNS[1:], values[1:], strict=True)
        )
        self.take_over = (
            f"UPDATE {table} SET {assignments} WHERE {column('digest')} = %s AND "
            f"({column('expires_at')} <= {now} OR ({column('state')} = %s AND "
            f"{column('locked_until')} <= {now} AND {column('fingerprint')} = %s))"
        )
        self.complete = (
            f"UPDATE {table} SET {column('state')} = %s, {column('locked_until')} = NULL, "
            f"{column('response_status')} = %s, {column('response_headers')} = %s, "
            f"{column('response_body')} = %s, {column('replayable')} = %s WHERE {owned}"
        )
        self.completed_by = f"SELECT 1 FROM {table} WHERE {owned}"
        self.renew = f"UPDATE {table} SET {column('locked_until')} = {later} WHERE {owned}"
        self.release = f"DELETE FROM {table} WHERE {owned}"

    # -- parameters ------------------------------------------------------------

    def claim_params(
        self, key: RequestKey, token: str, *, ttl: float, lease: float
    ) -> Sequence[Any]:
        return (key.digest, *self._claim_values(key, token, ttl=ttl, lease=lease))

    def take_over_params(
        self, key: RequestKey, token: str, *, ttl: float, lease: float
    ) -> Sequence[Any]:
        values = self._claim_values(key, token, ttl=ttl, lease=lease)
        return (*values, key.digest, State.IN_PROGRESS.value, key.fingerprint)

    def _claim_values(
        self, key: RequestKey, token: str, *, ttl: float, lease: float
    ) -> tuple[Any, ...]:
        """The parameters of a claim's values, after the digest."""
        duration = self.dialect.duration
        return (
            key.scope,
            key.key,
            key.fingerprint,
            State.IN_PROGRESS.value,
            token,
            duration(lease),
            duration(ttl),
        )

    def complete_params(
        self, key: RequestKey, token: str, response: StoredResponse
    ) -> Sequence[Any]:
        headers = self.json([list(pair) for pair in response.headers], None)
        return (
            State.COMPLETED.value,
            response.status,
            headers,
            response.body,
            response.replayable,
            *self.owned_params(key, token),
        )

    def completed_by_params(self, key: RequestKey, token: str) -> Sequence[Any]:
        return (key.digest, token, State.COMPLETED.value)

    def renew_params(self, key: RequestKey, token: str, *, lease: float) -> Sequence[Any]:
        return (self.dialect.duration(lease), *self.owned_params(key, token))

    def owned_params(self, key: RequestKey, token: str) -> Sequence[Any]:
        return (key.digest, token, State.IN_PROGRESS.value)
