"""Duplicate storms against a real multi-process server pool.

Many clients send the same request with the same key at the same moment to
gunicorn workers in different processes; the database is the only thing they
share. Every key must run its view exactly once, and every other request with
it must get the replay (or, while the first still runs, a 409).

The storm is aimed at the databases that serve such pools in production,
PostgreSQL and MariaDB; on SQLite, where every writer takes the whole
database's lock, it is skipped.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import servers
from django.db import connection

from demo.models import Order
from django_idempotency.models import IdempotencyKey, State

KEYS = 50
COPIES = 16
CLIENT_THREADS = 128
REQUEST_TIMEOUT = 30.0
BARRIER_TIMEOUT = 30.0

PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class Answer:
    """One response as the client saw it, or the error that replaced it."""

    key: str
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None = None

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotent-replayed") == "true"

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.key}: no answer ({self.error})"
        return f"{self.key}: {self.status} {self.headers} {self.body[:300]!r}"


def problem_code(body: bytes) -> object:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document.get("code") if isinstance(document, dict) else None


def post(server: servers.Server, path: str, key: str, body: bytes) -> Answer:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "Connection": "close",
            },
        )
        response = conn.getresponse()
        content = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Answer(key=key, status=response.status, headers=headers, body=content)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(key=key, status=None, headers={}, body=b"", error=repr(exc))
    finally:
        conn.close()


def storm(server: servers.Server, path: str, items: dict[str, str]) -> list[Answer]:
    """Send ``COPIES`` identical requests per key; the copies of one key leave
    together (a barrier per key), and several keys are in flight at once."""
    barriers = {key: threading.Barrier(COPIES) for key in items}

    def send(key: str) -> Answer:
        # A thread pool too slow to gather all copies: send anyway, with less overlap.
        with contextlib.suppress(threading.BrokenBarrierError):
            barriers[key].wait(timeout=BARRIER_TIMEOUT)
        body = json.dumps({"item": items[key], "quantity": 1}).encode()
        return post(server, path, key, body)

    # The copies of a key are submitted next to each other, and the pool is a
    # multiple of COPIES, so a key never waits at its barrier for a thread
    # that other keys' waiting copies hold.
    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        futures = [pool.submit(send, key) for key in items for _ in range(COPIES)]
        return [future.result() for future in futures]


@pytest.fixture
def server_pool(request: pytest.FixtureRequest) -> Iterator[Callable[..., servers.Server]]:
    """``server_pool()`` starts gunicorn against the current test database.

    The pool is always stopped (SIGTERM, then SIGKILL) after the test; if the
    test failed, its log is printed, so pytest shows it with the failure.
    """
    started: list[servers.Server] = []
    failed_before = request.session.testsfailed

    def start(**options: Any) -> servers.Server:
        server = servers.start(connection.settings_dict["NAME"], **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        if request.session.testsfailed > failed_before:
            print(f"--- gunicorn log ({server.log_path}) ---")
            print(server.log())
        server.cleanup()


STORMS = [
    pytest.param("/slow/orders/conflict/?delay=0.3", "conflict", id="on_conflict-409"),
    pytest.param("/slow/orders/?delay=0.3", "wait", id="on_conflict-wait"),
    # The same through DRF: IdempotencyMixin on a CreateAPIView, whose
    # on_conflict is decided per request by get_idempotency_options().
    pytest.param("/api/slow/orders/?delay=0.3", "conflict", id="drf-on_conflict-409"),
    pytest.param("/api/slow/orders/?delay=0.3&wait=1", "wait", id="drf-on_conflict-wait"),
]


@pytest.mark.storm
@pytest.mark.reliability
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("store", ["database", "redis"])
@pytest.mark.parametrize(("path", "mode"), STORMS)
def test_duplicate_storm_runs_each_key_once(
    request: pytest.FixtureRequest,
    server_pool: Callable[..., servers.Server],
    path: str,
    mode: str,
    store: str,
) -> None:
    if connection.vendor == "sqlite":
        pytest.skip(
            "the storm runs against server databases; "
            "run with IDEMPOTENCY_TEST_DATABASE=postgresql or mariadb"
        )
    if path.startswith("/api/"):
        pytest.importorskip("rest_framework")
    run = uuid.uuid4().hex[:8]
    redis_prefix = f"storm-{run}"
    if store == "redis":
        pytest.importorskip("django_redis", reason="the redis extra is not installed")
        import redis_servers

        # The keys go whatever the outcome (those in the database go with the flush).
        request.addfinalizer(lambda: redis_servers.delete_keys(redis_prefix))
        server = server_pool(
            extra_env={
                "IDEMPOTENCY_TEST_STORE": "redis",
                "IDEMPOTENCY_TEST_REDIS_PREFIX": redis_prefix,
            }
        )
    else:
        server = server_pool()
    items = {f"storm-{run}-{n:03d}": f"storm-{mode}-{run}-{n:03d}" for n in range(KEYS)}

    answers = storm(server, path, items)

    # The side effect: the orders per key, read from the shared database.
    orders: dict[str, list[int]] = defaultdict(list)
    for pk, item in Order.objects.filter(item__startswith=f"storm-{mode}-{run}-").values_list(
        "pk", "item"
    ):
        orders[item].append(pk)
    executions = {key: len(orders.get(item, [])) for key, item in items.items()}
    replays = sum(a.replayed for a in answers)
    conflicts = sum(a.status == 409 for a in answers)
    print(
        f"storm {path} on {connection.vendor} ({store} store): {len(answers)} requests, "
        f"{sum(executions.values())} executions, {replays} replays, {conflicts} 409s"
    )

    assert len(answers) == KEYS * COPIES
    unanswered = [a.describe() for a in answers if a.status is None]
    assert not unanswered, f"{len(unanswered)} requests got no answer:\n" + "\n".join(
        unanswered[:20]
    )
    server_errors = [a.describe() for a in answers if a.status is not None and a.status >= 500]
    assert not server_errors, f"{len(server_errors)} server errors:\n" + "\n".join(
        server_errors[:20]
    )
    not_once = {key: count for key, count in executions.items() if count != 1}
    assert not not_once, f"keys whose view did not run exactly once: {not_once}"

    by_key: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_key[answer.key].append(answer)

    problems: list[str] = []
    for key, item in items.items():
        copies = by_key[key]
        successes = [a for a in copies if 200 <= (a.status or 0) < 300]
        refusals = [a for a in copies if not 200 <= (a.status or 0) < 300]
        # One original, the rest replays of it: the same 201 and the same body.
        originals = [a for a in successes if not a.replayed]
        if len(originals) != 1:
            problems.append(f"{key}: {len(originals)} answers not marked as replays")
        statuses = Counter(a.status for a in successes)
        if set(statuses) != {201}:
            problems.append(f"{key}: 2xx statuses {dict(statuses)}")
        bodies = {a.body for a in successes}
        if len(bodies) != 1:
            problems.append(f"{key}: {len(bodies)} different 2xx bodies: {sorted(bodies)}")
        else:
            document = json.loads(next(iter(bodies)))
            if document.get("id") != orders[item][0] or document.get("item") != item:
                problems.append(f"{key}: answered {document}, stored order {orders[item]}")
        # Everything else: the in-use problem, never another outcome.
        for answer in refusals:
            if (
                answer.status != 409
                or answer.headers.get("content-type") != PROBLEM_CONTENT_TYPE
                or problem_code(answer.body) != "idempotency_key_in_use"
            ):
                problems.append(answer.describe())
    assert not problems, "\n".join(problems[:40])

    # Every key ends completed, in the store the pool used; no claim is left behind.
    if store == "redis":
        from django_idempotency.storage import RedisStorage

        redis = RedisStorage(cache_alias="idempotency").client()
        records = list(redis.scan_iter(match=f"{redis_prefix}:*"))
        states = Counter(redis.hget(record, "s") for record in records)
        assert states == {b"c": KEYS}
        assert not IdempotencyKey.objects.filter(key__in=list(items)).exists()
    else:
        states = Counter(
            IdempotencyKey.objects.filter(key__in=list(items)).values_list("state", flat=True)
        )
        assert states == {State.COMPLETED: KEYS}

    if mode == "conflict":
        # Copies released together at a view that sleeps 0.3 s: unless the pool
        # ran them one at a time (and this test proved nothing), some met the
        # first one still running.
        assert conflicts > 0, "no request overlapped another with the same key"
