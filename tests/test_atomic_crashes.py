"""Workers killed mid-request, with and without atomic mode.

A gunicorn pool serves ``demo.faults``, whose view writes an order and then
kills its own worker (SIGKILL: no cleanup, no response) at one point of the
request. The client then retries the same request with the same key until it
gets an answer, as a real client would. Without atomic mode, a worker that
dies after the view's write but before the response is stored leaves a claim
that lapses, and the retry writes the order again; in atomic mode the write
and the completion commit together, so every case ends with one order.

Runs on PostgreSQL and MariaDB (the pool's workers share the test database).
"""

from __future__ import annotations

import http.client
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import servers
from django.db import connection

from demo.faults import LOCK_TIMEOUT
from demo.models import Order
from django_idempotency.models import IdempotencyKey, State

PATHS = {"atomic": "/faults/atomic/orders/", "plain": "/faults/orders/"}

#: Orders written per request, by mode and crash point. Without atomic mode
#: the crash after the write and before the completion is the window in
#: which a retry runs the view a second time.
EXPECTED_ORDERS = {
    ("atomic", "before-commit"): 1,
    ("atomic", "after-commit"): 1,
    ("atomic", "after-response"): 1,
    ("plain", "before-commit"): 2,
    ("plain", "after-commit"): 2,
    ("plain", "after-response"): 1,
}

#: How long the retries go on: the lease, a worker's restart, and a margin.
RETRY_FOR = LOCK_TIMEOUT + 20.0


@dataclass(frozen=True)
class Answer:
    status: int | None
    replayed: bool
    body: bytes


def post(server: servers.Server, path: str, key: str, headers: dict[str, str]) -> Answer:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("POST", path, body=b"{}", headers={"Idempotency-Key": key, **headers})
        response = conn.getresponse()
        body = response.read()
        return Answer(response.status, response.getheader("Idempotent-Replayed") == "true", body)
    except (OSError, http.client.HTTPException):
        return Answer(None, False, b"")  # the worker died before answering
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pool(
    django_db_setup: None, django_db_blocker: pytest.FixtureRequest
) -> Iterator[servers.Server]:
    if connection.vendor == "sqlite":
        pytest.skip("crash tests run against server databases (PostgreSQL, MariaDB)")
    server = servers.start(
        connection.settings_dict["NAME"],
        workers=2,
        threads=2,
        extra_env={"IDEMPOTENCY_TEST_FAULTS": "1"},
    )
    yield server
    server.stop()
    server.cleanup()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("point", ["before-commit", "after-commit", "after-response"])
@pytest.mark.parametrize("mode", ["atomic", "plain"])
def test_worker_killed_then_retried(pool: servers.Server, mode: str, point: str) -> None:
    key = f"crash-{uuid.uuid4().hex}"
    item = f"{mode}-{point}-{key}"
    path = f"{PATHS[mode]}?item={item}"

    first = post(pool, path, key, {"X-Crash-At": point})
    answers = [first]
    deadline = time.monotonic() + RETRY_FOR
    while answers[-1].status != 201 and time.monotonic() < deadline:
        time.sleep(0.2)
        answers.append(post(pool, path, key, {}))

    statuses = [answer.status for answer in answers]
    time.sleep(0.2)  # after-response: the worker dies once the answer is sent
    replay = post(pool, path, key, {})
    executed = Order.objects.filter(item=item).count()
    record = IdempotencyKey.objects.get(key=key)
    print(
        f"{connection.vendor} {mode} crash {point}: answers {statuses}, "
        f"{executed} orders, key {record.state}"
    )
    assert answers[-1].status == 201, f"no 201 within {RETRY_FOR:g} s: {statuses}"
    assert set(statuses[1:-1]) <= {409, None}, statuses
    assert record.state == State.COMPLETED
    assert executed == EXPECTED_ORDERS[mode, point]
    assert replay.status == 201
    assert replay.replayed
    assert replay.body == answers[-1].body, "the stored response is not the one answered"
    if point == "after-response":
        assert first.status == 201
    else:
        assert first.status is None, "the worker answered before it was killed"
    if mode == "atomic" and point == "after-commit":
        # The completion committed with the order: the first retry replays it.
        assert statuses[1:] == [201]
        assert answers[-1].replayed
