"""What is particular to the database store: its statements, its clock, its
database alias and router, and its purge."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.db.models import Model
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from factories import IdempotencyKeyFactory, create_expired_keys
from helpers import LEASE, TTL, claim_token, new_key

from django_idempotency.models import IdempotencyKey, State
from django_idempotency.responses import StoredResponse
from django_idempotency.storage import DatabaseStorage, PurgeResult, RequestKey, StorageError
from django_idempotency.storage.statements import Statements

RESPONSE = StoredResponse(
    status=201, headers=(("Content-Type", "application/json"),), body=b'{"id": 1}'
)


def _row(key: RequestKey) -> IdempotencyKey:
    return IdempotencyKey.objects.get(digest=key.digest)


class IdempotencyRouter:
    """Sends the idempotency keys to one alias and says nothing of other models."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def _route(self, model: type[Model]) -> str | None:
        return self.alias if model._meta.app_label == "django_idempotency" else None

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return self._route(model)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        return self._route(model)


# -- one statement each --------------------------------------------------------------------


@pytest.mark.django_db
def test_claim_of_a_fresh_key_is_one_query() -> None:
    storage = DatabaseStorage()

    with CaptureQueriesContext(connection) as queries:
        claim = storage.claim(new_key(), ttl=TTL, lease=LEASE)

    assert claim.claimed
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert queries[0]["sql"].lstrip().upper().startswith("INSERT")


@pytest.mark.django_db
def test_complete_is_one_query() -> None:
    storage = DatabaseStorage()
    key = new_key()
    token = claim_token(storage, key)

    with CaptureQueriesContext(connection) as queries:
        assert storage.complete(key, token, RESPONSE)

    assert len(queries) == 1, [q["sql"] for q in queries]
    assert queries[0]["sql"].lstrip().upper().startswith("UPDATE")


@pytest.mark.django_db
def test_release_is_one_query() -> None:
    storage = DatabaseStorage()
    key = new_key()
    token = claim_token(storage, key)

    with CaptureQueriesContext(connection) as queries:
        assert storage.release(key, token)

    assert len(queries) == 1, [q["sql"] for q in queries]
    assert queries[0]["sql"].lstrip().upper().startswith("DELETE")


@pytest.mark.django_db
def test_a_replay_is_two_queries_and_writes_nothing() -> None:
    """The insert that does nothing, then the read of the record it ran into."""
    storage = DatabaseStorage()
    key = new_key()
    token = claim_token(storage, key)
    storage.complete(key, token, RESPONSE)

    with CaptureQueriesContext(connection) as queries:
        record = storage.claim(key, ttl=TTL, lease=LEASE).record

    assert record is not None
    assert record.response == RESPONSE
    sql = [q["sql"].lstrip().upper() for q in queries]
    assert len(sql) == 2, sql
    assert sql[0].startswith("INSERT")
    assert sql[1].startswith("SELECT")


@pytest.mark.django_db
def test_a_takeover_is_three_queries() -> None:
    """An abandoned claim of the same request: the insert that loses, the
    read that finds the lease lapsed, and the conditional update."""
    storage = DatabaseStorage()
    key = new_key()
    claim_token(storage, key, lease=0.05)
    time.sleep(0.1)

    with CaptureQueriesContext(connection) as queries:
        claim = storage.claim(key, ttl=TTL, lease=LEASE)

    assert claim.claimed
    assert len(queries) == 3, [q["sql"] for q in queries]
    assert queries[-1]["sql"].lstrip().upper().startswith("UPDATE")


@pytest.mark.django_db
def test_the_row_written_by_a_claim_and_a_completion() -> None:
    storage = DatabaseStorage()
    key = RequestKey(scope="user:7|payments/", key="pay-1", fingerprint="f" * 64)
    token = claim_token(storage, key)

    row = _row(key)
    assert (row.scope, row.key, row.fingerprint) == ("user:7|payments/", "pay-1", "f" * 64)
    assert row.state == State.IN_PROGRESS
    assert row.owner == token
    assert row.locked_until is not None
    assert row.response_body is None

    storage.complete(key, token, RESPONSE)

    row = _row(key)
    assert row.state == State.COMPLETED
    assert row.locked_until is None
    assert row.response_status == 201
    assert row.response_headers == [["Content-Type", "application/json"]]
    assert bytes(row.response_body) == b'{"id": 1}'
    assert row.replayable is True


# -- the database clock --------------------------------------------------------------------


@pytest.mark.django_db
def test_expiry_is_exactly_ttl_after_creation() -> None:
    key = new_key()

    DatabaseStorage().claim(key, ttl=TTL, lease=LEASE)

    row = _row(key)
    assert row.expires_at - row.created_at == timedelta(seconds=TTL)


@pytest.mark.django_db
def test_the_lease_ends_exactly_lock_timeout_after_creation() -> None:
    key = new_key()

    DatabaseStorage().claim(key, ttl=TTL, lease=2.5)

    row = _row(key)
    assert row.locked_until is not None
    assert row.locked_until - row.created_at == timedelta(seconds=2.5)


@pytest.mark.django_db
def test_a_take_over_restarts_the_times_from_the_database_clock() -> None:
    storage = DatabaseStorage()
    key = new_key()
    storage.claim(key, ttl=TTL, lease=0.3)
    first = _row(key)
    time.sleep(0.5)

    assert storage.claim(key, ttl=TTL, lease=LEASE).claimed

    row = _row(key)
    assert row.created_at - first.created_at >= timedelta(seconds=0.4)
    assert row.expires_at - row.created_at == timedelta(seconds=TTL)
    assert row.locked_until is not None
    assert row.locked_until - row.created_at == timedelta(seconds=LEASE)


@pytest.mark.django_db
def test_times_are_aware_and_near_now() -> None:
    key = new_key()

    before = timezone.now()
    DatabaseStorage().claim(key, ttl=TTL, lease=LEASE)
    after = timezone.now()

    row = _row(key)
    assert row.created_at.tzinfo is not None
    # The same machine's clock: the database's now is the test's now, give or
    # take the precision of the database (SQLite keeps milliseconds).
    assert before - timedelta(seconds=1) <= row.created_at <= after + timedelta(seconds=1)


@pytest.mark.django_db
def test_each_claim_reads_the_clock_anew_inside_a_transaction() -> None:
    # Inside a transaction, CURRENT_TIMESTAMP on PostgreSQL is the time the
    # transaction began; leases would be computed from a stale time.
    storage = DatabaseStorage()
    first, second = new_key(), new_key()
    with transaction.atomic():
        storage.claim(first, ttl=TTL, lease=LEASE)
        time.sleep(0.3)
        storage.claim(second, ttl=TTL, lease=LEASE)

    assert _row(second).created_at - _row(first).created_at >= timedelta(seconds=0.2)


@pytest.mark.django_db
def test_times_come_from_the_database_clock_not_the_workers(db_vendor: str) -> None:
    if db_vendor != "mysql":
        pytest.skip("only MariaDB lets a session set its own clock (SET timestamp)")
    key = new_key()
    with connection.cursor() as cursor:
        cursor.execute("SET timestamp = UNIX_TIMESTAMP('2001-02-03 04:05:06')")
        try:
            DatabaseStorage().claim(key, ttl=TTL, lease=LEASE)
        finally:
            cursor.execute("SET timestamp = DEFAULT")

    row = _row(key)
    assert row.created_at.year == 2001
    assert row.expires_at - row.created_at == timedelta(seconds=TTL)


# -- which database ------------------------------------------------------------------------


@pytest.mark.django_db
def test_explicit_default_alias() -> None:
    storage = DatabaseStorage(database="default")
    key = new_key()

    assert storage.alias == "default"
    token = claim_token(storage, key)
    assert storage.complete(key, token, RESPONSE)
    assert IdempotencyKey.objects.using("default").filter(digest=key.digest).exists()


def test_explicit_alias_is_the_one_used(down_database: str) -> None:
    storage = DatabaseStorage(database=down_database)

    assert storage.alias == down_database
    with pytest.raises(StorageError):
        storage.claim(new_key(), ttl=TTL, lease=LEASE)


def test_router_is_honoured_without_an_alias(settings: Any, down_database: str) -> None:
    settings.DATABASE_ROUTERS = [IdempotencyRouter(down_database)]
    storage = DatabaseStorage()

    assert storage.alias == down_database
    with pytest.raises(StorageError):
        storage.claim(new_key(), ttl=TTL, lease=LEASE)


@pytest.mark.django_db
def test_router_sending_keys_to_default(settings: Any) -> None:
    settings.DATABASE_ROUTERS = [IdempotencyRouter("default")]
    storage = DatabaseStorage()
    key = new_key()

    assert storage.alias == "default"
    assert storage.claim(key, ttl=TTL, lease=LEASE).claimed
    assert _row(key).state == State.IN_PROGRESS


@pytest.mark.django_db
def test_explicit_alias_wins_over_the_router(settings: Any, down_database: str) -> None:
    settings.DATABASE_ROUTERS = [IdempotencyRouter(down_database)]
    storage = DatabaseStorage(database="default")

    assert storage.alias == "default"
    assert storage.claim(new_key(), ttl=TTL, lease=LEASE).claimed


def test_every_method_raises_storage_error_when_the_database_is_down(
    down_database: str,
) -> None:
    storage = DatabaseStorage(database=down_database)
    key = new_key()

    with pytest.raises(StorageError):
        storage.claim(key, ttl=TTL, lease=LEASE)
    with pytest.raises(StorageError):
        storage.complete(key, "0" * 32, RESPONSE)
    with pytest.raises(StorageError):
        storage.release(key, "0" * 32)
    with pytest.raises(StorageError):
        storage.purge(batch_size=10)
    with pytest.raises(StorageError):
        storage.purge(batch_size=10, dry_run=True)


async def test_async_methods_raise_storage_error_when_the_database_is_down(
    down_database: str,
) -> None:
    storage = DatabaseStorage(database=down_database)
    key = new_key()

    with pytest.raises(StorageError):
        await storage.aclaim(key, ttl=TTL, lease=LEASE)
    with pytest.raises(StorageError):
        await storage.acomplete(key, "0" * 32, RESPONSE)
    with pytest.raises(StorageError):
        await storage.arelease(key, "0" * 32)


# -- purge ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_purge_never_deletes_a_live_claim_even_past_its_expiry() -> None:
    live_claim = IdempotencyKeyFactory(in_progress=True, expired=True)

    result = DatabaseStorage().purge(batch_size=100)

    assert result == PurgeResult(deleted=0, batches=0)
    assert IdempotencyKey.objects.filter(pk=live_claim.pk).exists()


@pytest.mark.django_db
def test_purge_deletes_expired_records_and_keeps_the_rest() -> None:
    expired_completed = IdempotencyKeyFactory(expired=True)
    expired_abandoned = IdempotencyKeyFactory(abandoned=True, expired=True)
    kept = {
        IdempotencyKeyFactory().pk,  # completed, live
        IdempotencyKeyFactory(in_progress=True).pk,  # running
        IdempotencyKeyFactory(abandoned=True).pk,  # lease passed, ttl not: a retry takes it over
        IdempotencyKeyFactory(in_progress=True, expired=True).pk,  # live claim
    }

    result = DatabaseStorage().purge(batch_size=100)

    assert result == PurgeResult(deleted=2, batches=1)
    remaining = set(IdempotencyKey.objects.values_list("pk", flat=True))
    assert remaining == kept
    assert expired_completed.pk not in remaining
    assert expired_abandoned.pk not in remaining


@pytest.mark.django_db
def test_purge_dry_run_counts_and_deletes_nothing() -> None:
    IdempotencyKeyFactory.create_batch(3, expired=True)
    IdempotencyKeyFactory(abandoned=True, expired=True)
    IdempotencyKeyFactory(in_progress=True, expired=True)
    IdempotencyKeyFactory.create_batch(2)

    with CaptureQueriesContext(connection) as queries:
        result = DatabaseStorage().purge(batch_size=2, dry_run=True)

    assert result == PurgeResult(deleted=4, batches=0)
    assert IdempotencyKey.objects.count() == 7
    assert all(not q["sql"].lstrip().upper().startswith(("DELETE", "UPDATE")) for q in queries), (
        queries
    )


@pytest.mark.django_db
def test_purge_in_batches_counts_right() -> None:
    create_expired_keys(2500)
    live = IdempotencyKeyFactory.create_batch(5)

    with CaptureQueriesContext(connection) as queries:
        result = DatabaseStorage().purge(batch_size=1000)

    assert result == PurgeResult(deleted=2500, batches=3)
    # Each batch is a SELECT of primary keys and a DELETE.
    assert len(queries) == 6, [q["sql"][:80] for q in queries]
    assert set(IdempotencyKey.objects.values_list("pk", flat=True)) == {row.pk for row in live}


@pytest.mark.django_db
def test_purge_of_an_exact_multiple_of_the_batch_size() -> None:
    create_expired_keys(2000)

    result = DatabaseStorage().purge(batch_size=1000)

    assert result is not None
    assert result.deleted == 2000
    assert result.batches == 2
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
def test_purge_of_nothing() -> None:
    IdempotencyKeyFactory()

    assert DatabaseStorage().purge(batch_size=1000) == PurgeResult(deleted=0, batches=0)
    assert DatabaseStorage().purge(batch_size=1000, dry_run=True) == PurgeResult(0, 0)


@pytest.mark.django_db
def test_purge_then_the_key_is_new_again() -> None:
    storage = DatabaseStorage()
    key = new_key()
    token = claim_token(storage, key, ttl=0.5, lease=0.2)
    storage.complete(key, token, RESPONSE)
    time.sleep(0.7)

    assert storage.purge(batch_size=10) == PurgeResult(deleted=1, batches=1)
    assert storage.claim(key, ttl=TTL, lease=LEASE).claimed


@pytest.mark.django_db(transaction=True)
def test_a_connection_that_died_fails_once_and_the_next_statement_reconnects(
    db_vendor: str,
) -> None:
    """The database dropped the connection (a restart, a failover, a proxy
    cut): the statement on it fails as a StorageError, whatever the driver
    raises (PyMySQL's ``InterfaceError`` is no ``DatabaseError``), and the
    connection is closed, so that the store's next statement, such as the
    retry of a completion, opens a new one."""
    if db_vendor == "sqlite":
        pytest.skip("an SQLite connection is a file handle, which the server cannot drop")
    storage = DatabaseStorage()
    key = new_key()
    token = claim_token(storage, key)
    connection.connection.close()  # behind Django's back, as a dropped socket is

    with pytest.raises(StorageError):
        storage.complete(key, token, StoredResponse(status=201, body=b"{}"))

    assert storage.complete(key, token, StoredResponse(status=201, body=b"{}")) is True
    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.state == "completed"


@pytest.mark.django_db(transaction=True)
def test_a_claim_that_waited_for_a_concurrent_one_gets_its_record(db_vendor: str) -> None:
    """A claim whose INSERT waits for a concurrent claim of the same key
    (not yet committed), then loses to it, answers with the record that
    won, read after the winner committed."""
    if db_vendor == "sqlite":
        pytest.skip("SQLite has one writer: a second one fails at once instead of waiting")
    storage = DatabaseStorage()
    key = new_key()
    other = connections.create_connection("default")
    try:
        other.set_autocommit(False)
        statements = Statements(other)
        with other.cursor() as cursor:  # the concurrent claim, left uncommitted
            cursor.execute(
                statements.claim, statements.claim_params(key, "winner", ttl=TTL, lease=LEASE)
            )
        outcome: list[Any] = []

        def claim() -> None:
            try:
                outcome.append(storage.claim(key, ttl=TTL, lease=LEASE))
            finally:
                connections.close_all()  # this thread's own

        loser = threading.Thread(target=claim)
        loser.start()
        time.sleep(0.5)
        assert loser.is_alive(), "the second claim did not wait for the first"
        other.commit()
        loser.join(timeout=10)
    finally:
        other.close()

    [claim] = outcome
    assert not claim.claimed
    assert claim.record is not None
    assert claim.record.state == State.IN_PROGRESS
    assert _row(key).owner == "winner"
