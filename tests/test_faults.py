"""Faults under a real server pool: killed workers, slow views, and a store
that becomes unreachable mid-run and comes back.

Each store runs behind a TCP proxy (:mod:`proxy`) that the test cuts and
restores: for the database store, the keys live in the test database reached
through the proxy (a second alias), while the view's own writes go straight
to it; for the Redis store, the cache's URL points at the proxy. A gunicorn
pool (two processes) serves ``demo.faults``, whose view writes an order per
run and is told by headers how long to take, what to answer, or where to die.
Every request here sends the same key and body as its retries, and the orders
counted in the database are the view's executions.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import servers
from django.db import connection
from proxy import Proxy, store_behind_proxy

from demo.faults import LOCK_TIMEOUT
from demo.models import Order

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PROTECTED = "/faults/orders/"
FAIL_OPEN = "/faults/open/orders/"

#: How long a client keeps retrying: the lease, a worker's restart, a margin.
RETRY_FOR = LOCK_TIMEOUT + 20.0

#: A blip: the store is cut this long after the view (``X-Delay`` 1 s) began,
#: for this long, so that the view answers while the store is away. The
#: lease, renewed every third of ``LOCK_TIMEOUT``, outlasts a blip this
#: short by more than half a second however the two fall.
BLIP_AFTER = 0.8
BLIP_FOR = 0.5


@dataclass(frozen=True)
class Answer:
    status: int | None
    replayed: bool = False
    body: bytes = b""

    @property
    def code(self) -> object:
        return self._member("code")

    @property
    def order(self) -> object:
        return self._member("id")

    def _member(self, name: str) -> object:
        try:
            return json.loads(self.body).get(name)
        except (ValueError, AttributeError):
            return None


@dataclass
class Rig:
    store: str
    proxy: Proxy
    server: servers.Server
    redis_prefix: str | None = None
    #: Where the current test's part of the pool's log begins.
    log_start: int = 0

    def log(self) -> str:
        """What the pool logged since the current test began (the pool serves
        every test of the module, in random order)."""
        return self.server.log()[self.log_start :]

    def clear(self) -> None:
        """Delete the keys the pool stored in Redis, reached directly rather
        than through the proxy. (Those in the test database go with the flush
        that ends each test.)"""
        clear_redis(self.redis_prefix)

    def post(self, path: str, key: str, **headers: str) -> Answer:
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=30)
        wire = {name.replace("_", "-"): value for name, value in headers.items()}
        try:
            conn.request("POST", path, body=b"{}", headers={"Idempotency-Key": key, **wire})
            response = conn.getresponse()
            body = response.read()
            return Answer(
                response.status, response.getheader("Idempotent-Replayed") == "true", body
            )
        except (OSError, http.client.HTTPException):
            return Answer(None)
        finally:
            conn.close()

    def retry_until_answered(self, path: str, key: str) -> list[Answer]:
        """Retry as a client would, while the key is in use or no answer
        comes, until another answer or :data:`RETRY_FOR` has passed."""
        answers: list[Answer] = []
        deadline = time.monotonic() + RETRY_FOR
        while time.monotonic() < deadline:
            answers.append(self.post(path, key))
            if answers[-1].status not in (409, None):
                break
            time.sleep(0.2)
        return answers


class Sent:
    """A request sent from a thread of its own: :meth:`answer` waits for it."""

    def __init__(self, rig: Rig, path: str, key: str, **headers: str) -> None:
        self._answers: list[Answer] = []
        self._thread = threading.Thread(
            target=lambda: self._answers.append(rig.post(path, key, **headers))
        )
        self._thread.start()

    def answer(self) -> Answer:
        self._thread.join()
        return self._answers[0]

    def wait_until_running(self, item: str) -> None:
        """Wait until the view has written its order: the key is claimed and
        the view is in its ``X-Delay``. (A fixed sleep instead would let a
        slow machine cut the store before the claim.)"""
        deadline = time.monotonic() + 10.0
        while not runs(item):
            assert time.monotonic() < deadline, "the view never started"
            time.sleep(0.02)


def clear_redis(prefix: str | None) -> None:
    if prefix is not None:
        import redis_servers

        redis_servers.delete_keys(prefix)


@pytest.fixture(scope="module", params=["database", "redis"])
def rig(
    request: pytest.FixtureRequest, django_db_setup: None, django_db_blocker: Any
) -> Iterator[Rig]:
    if connection.vendor == "sqlite":
        pytest.skip("fault tests run against server databases (PostgreSQL, MariaDB)")
    if request.param == "redis":
        pytest.importorskip("django_redis", reason="the redis extra is not installed")
    with store_behind_proxy(request.param, "faults") as store:
        server = servers.start(
            connection.settings_dict["NAME"],
            workers=2,
            threads=4,
            extra_env={"IDEMPOTENCY_TEST_FAULTS": "1", **store.env},
        )
        try:
            yield Rig(request.param, store.proxy, server, store.redis_prefix)
        finally:
            server.stop()
            server.cleanup()


@pytest.fixture
def key(rig: Rig) -> Iterator[str]:
    rig.proxy.restore()
    rig.log_start = len(rig.server.log())
    yield f"fault-{uuid.uuid4().hex}"
    rig.proxy.restore()
    rig.clear()


def runs(path_item: str) -> int:
    return Order.objects.filter(item=path_item).count()


def path_for(base: str, key: str) -> tuple[str, str]:
    item = f"item-{key}"
    return f"{base}?item={item}", item


# -- the store unreachable ------------------------------------------------------------------------


def test_store_down_at_claim_fails_closed_then_recovers(rig: Rig, key: str) -> None:
    path, item = path_for(PROTECTED, key)
    rig.proxy.cut()
    refused = rig.post(path, key)
    rig.proxy.restore()
    first = rig.post(path, key)
    retry = rig.post(path, key)

    print(
        f"{rig.store}: store down at claim: {refused.status} {refused.code}; back: {first.status}"
    )
    assert refused.status == 503
    assert refused.code == "idempotency_storage_unavailable"
    assert first.status == 201
    assert not first.replayed, "the refused request left something behind"
    assert retry.replayed
    assert retry.body == first.body
    assert runs(item) == 1


def test_store_down_at_claim_with_fail_open_runs_the_view_and_says_so(rig: Rig, key: str) -> None:
    path, item = path_for(FAIL_OPEN, key)
    rig.proxy.cut()
    unprotected = rig.post(path, key)
    rig.proxy.restore()
    protected = rig.post(path, key)
    retry = rig.post(path, key)

    assert unprotected.status == 201
    assert "running the view unprotected because fail_open is set" in rig.log()
    assert protected.status == 201
    assert not protected.replayed
    assert retry.replayed
    assert runs(item) == 2  # once unprotected, once protected


def _blip(rig: Rig, seconds: float) -> None:
    """Cut the store now, and bring it back ``seconds`` later."""
    rig.proxy.cut()
    threading.Timer(seconds, rig.proxy.restore).start()


def test_store_blip_at_completion_is_ridden_out(rig: Rig, key: str) -> None:
    """The store goes away as the view answers, and comes back half a second
    later: the completion is retried until it lands, the client gets its
    answer a little later, and a retry gets the replay, not a second run."""
    path, item = path_for(PROTECTED, key)
    first = Sent(rig, path, key, X_Delay="1.0")
    first.wait_until_running(item)
    time.sleep(BLIP_AFTER)
    _blip(rig, BLIP_FOR)
    answer = first.answer()
    retry = rig.post(path, key)

    print(f"{rig.store}: blip at completion: first {answer.status}, retry {retry.status}")
    assert answer.status == 201
    assert retry.replayed, f"the completion was lost: {retry}"
    assert retry.body == answer.body
    assert "store unavailable at completion" not in rig.log()
    assert runs(item) == 1


def test_store_blip_at_release_is_ridden_out(rig: Rig, key: str) -> None:
    """The same at a release (the view answered 503): the release lands once
    the store is back, so the retry runs at once instead of meeting 409."""
    path, item = path_for(PROTECTED, key)
    first = Sent(rig, path, key, X_Delay="1.0", X_Answer_Status="503")
    first.wait_until_running(item)
    time.sleep(BLIP_AFTER)
    _blip(rig, BLIP_FOR)
    answer = first.answer()
    retry = rig.post(path, key)

    assert answer.status == 503
    assert retry.status == 201, f"the release was lost: {retry}"
    assert runs(item) == 2  # the failed run wrote its order, then the retry


def test_store_down_at_completion_leaves_the_claim_until_its_lease(rig: Rig, key: str) -> None:
    """The view ran and answered; its response could not be stored, and the
    store stayed away past the claim's lease, so the retries of the
    completion gave up. The claim stays (nothing half-written), so a retry
    gets 409 until the lease ends and then runs the view again: the
    documented cost of an outage longer than the lease at that moment (atomic
    mode closes it for writes in the same database)."""
    path, item = path_for(PROTECTED, key)
    first = Sent(rig, path, key, X_Delay="1.0")
    first.wait_until_running(item)
    time.sleep(0.5)
    rig.proxy.cut()
    answer = first.answer()
    rig.proxy.restore()
    started = time.monotonic()
    retries = rig.retry_until_answered(path, key)
    waited = time.monotonic() - started

    statuses = [a.status for a in retries]
    print(f"{rig.store}: store down at completion: first {answer.status}, retries {statuses}")
    assert answer.status == 201
    assert "store unavailable at completion" in rig.log()
    # The completion retried until the lease ended, so the answer came when
    # the key was about to be free: a retry meets 409 at most briefly.
    assert set(statuses[:-1]) <= {409}
    assert statuses[-1] == 201
    assert not retries[-1].replayed
    assert waited < LOCK_TIMEOUT + 5, "the key stayed stuck past its lease"
    assert runs(item) == 2


def test_store_down_at_release_leaves_the_claim_until_its_lease(rig: Rig, key: str) -> None:
    path, item = path_for(PROTECTED, key)
    first = Sent(rig, path, key, X_Delay="1.0", X_Answer_Status="503")
    first.wait_until_running(item)
    time.sleep(0.5)
    rig.proxy.cut()
    answer = first.answer()
    rig.proxy.restore()
    retries = rig.retry_until_answered(path, key)

    statuses = [a.status for a in retries]
    print(f"{rig.store}: store down at release: first {answer.status}, retries {statuses}")
    assert answer.status == 503
    assert "store unavailable at release" in rig.log()
    assert set(statuses[:-1]) <= {409}
    assert statuses[-1] == 201
    assert runs(item) == 2


# -- workers that die or run late ---------------------------------------------------------------


def test_worker_killed_mid_view_then_the_key_runs_once_after_its_lease(rig: Rig, key: str) -> None:
    path, item = path_for(PROTECTED, key)
    killed = rig.post(path, key, X_Crash_At="before-commit")
    started = time.monotonic()
    retries = rig.retry_until_answered(path, key)
    waited = time.monotonic() - started
    replay = rig.post(path, key)

    statuses = [a.status for a in retries]
    print(f"{rig.store}: worker killed: retries {statuses} over {waited:.1f} s")
    assert killed.status is None
    assert set(statuses[:-1]) <= {409, None}
    assert statuses[-1] == 201
    assert waited < LOCK_TIMEOUT + 10, "the key stayed stuck past its lease"
    assert replay.replayed
    assert replay.body == retries[-1].body
    # The killed run's write was committed before it died; the retry's is the second.
    assert runs(item) == 2


def test_view_outliving_its_lease_keeps_its_key(rig: Rig, key: str) -> None:
    """A's view takes longer than the lease; its worker renews the lease
    while it runs, so B, a retry after the first lease, is told the request
    is still in flight instead of running the view again, and every later
    retry gets A's answer."""
    path, item = path_for(PROTECTED, key)
    first = Sent(rig, path, key, X_Delay=str(LOCK_TIMEOUT + 1.5))
    time.sleep(LOCK_TIMEOUT + 0.3)
    retry = rig.post(path, key)
    slow = first.answer()
    later = rig.post(path, key)

    print(f"{rig.store}: lease outlived: retry {retry.status}, A got order {slow.order}")
    assert retry.status == 409
    assert slow.status == 201
    assert later.replayed
    assert later.body == slow.body
    assert runs(item) == 1
