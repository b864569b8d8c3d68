"""What idempotency costs: the same view, plain and protected, under load.

    python benchmarks/run.py                       # PostgreSQL and MariaDB, Redis
    python benchmarks/run.py --databases postgresql --rounds 3 --duration 3

Needs the test extras and the machine's PostgreSQL, MariaDB and Redis (the
services the test suite uses; see docs/contributing.rst). Not part of the test
suite: it prints figures and ratios, and asserts nothing about speed.

For each database, a gunicorn pool (4 gthread workers with persistent
database connections, as a small production setup) serves ``demo.bench``:
two views, the minimal one (one INSERT, a 40-byte answer) and a typical one
(about 1 KB of JSON), each mounted plain, behind ``@idempotent`` (database
store, Redis store, and the database store in atomic mode), and as a DRF
APIView plain and with ``IdempotencyMixin``. Load comes
from client threads in this process, each on a keep-alive connection, every
POST with a fresh key. The variants run in interleaved rounds, so that the
machine's drift hits all of them alike, and each is reported as a ratio to the
plain view of the same round. CPU per request is the whole machine's (server,
database, Redis) minus this process's own.

Two more forms make the store's round trips with the package's own SQL and
Lua and none of its Python: the floor of any protection that claims before
the view and completes after it.

Then: unloaded first requests and replays, the package's own Python per
request, designs measured on their SQL alone, round trips per request counted in
the database's statements and in Redis' command statistics, bytes per stored
key, what keeping leases alive costs, the duplicate storm, and (PostgreSQL)
purging a million expired keys, alone and under traffic.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "testproject"), str(ROOT / "tests")]

import servers  # noqa: E402  (tests/servers.py: the gunicorn pool)

BENCH_DB = "idempotency_bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: The views (``demo.bench``): the cheapest a user could write (one INSERT,
#: a 40-byte answer), where protection's cost shows most, and a typical one.
VIEWS = ("minimal", "typical")
#: Each view's forms, plain and protected; each protected form's plain twin.
FORMS = (
    "plain",
    "database",
    "atomic",
    "redis",
    "middleware",
    "drf-plain",
    "drf-database",
    "drf-redis",
    "floor-database",
    "floor-redis",
    "floor-one-commit",
)
TWIN = {
    "database": "plain",
    "middleware": "plain",
    "atomic": "plain",
    "redis": "plain",
    "drf-database": "drf-plain",
    "drf-redis": "drf-plain",
    "floor-database": "plain",
    "floor-redis": "plain",
    "floor-one-commit": "plain",
}
#: The forms that make the store's round trips with none of the package's
#: Python (``demo.bench``): the floor of any protection built this way.
FLOORS = ("floor-database", "floor-redis", "floor-one-commit")
#: Every variant, "<view>/<form>", and its URL.
VARIANTS = {f"{view}/{form}": f"/bench/{view}/{form}/" for view in VIEWS for form in FORMS}


def baseline(variant: str) -> str | None:
    """The plain twin of a protected variant (None for a plain one)."""
    view, form = variant.split("/")
    return f"{view}/{TWIN[form]}" if form in TWIN else None


# -- measuring --------------------------------------------------------------------------------


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class Sample:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu: float = 0.0

    def add(self, other: Sample) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latencies += other.latencies
        self.seconds += other.seconds
        self.cpu += other.cpu

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.requests * 1000 if self.requests else float("nan")


def load(
    server: servers.Server,
    path: str,
    *,
    seconds: float,
    concurrency: int,
    key_for: Callable[[int, int], str] | None = None,
) -> Sample:
    """POST to ``path`` from ``concurrency`` threads for ``seconds``; each
    request has a fresh key unless ``key_for(thread, n)`` says otherwise."""
    deadline = time.monotonic() + seconds
    results: list[Sample] = [Sample() for _ in range(concurrency)]

    def client(index: int) -> None:
        sample = results[index]
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        n = 0
        while time.monotonic() < deadline:
            key = key_for(index, n) if key_for else uuid.uuid4().hex
            body = json.dumps({"item": f"bench-{index}"}).encode()
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status < 500
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
                ok = False
            sample.latencies.append(time.perf_counter() - started)
            sample.requests += 1
            sample.errors += not ok
            n += 1
        conn.close()

    cpu_before, own_before = machine_cpu_seconds(), time.process_time()
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Sample(seconds=time.monotonic() - started)
    for sample in results:
        total.requests += sample.requests
        total.errors += sample.errors
        total.latencies += sample.latencies
    total.cpu = (machine_cpu_seconds() - cpu_before) - (time.process_time() - own_before)
    return total


# -- the database and the pool ------------------------------------------------------------------


def prepare_database(vendor: str) -> None:
    """Create the benchmark database if needed, and migrate it."""
    if vendor == "postgresql":
        import psycopg

        with psycopg.connect(
            "host=127.0.0.1 user=postgres dbname=postgres", autocommit=True
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)
            ).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {BENCH_DB}")
    else:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", user="root", password="")
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {BENCH_DB} CHARACTER SET utf8mb4")
        conn.close()
    subprocess.run(
        [sys.executable, str(ROOT / "testproject" / "manage.py"), "migrate", "-v", "0"],
        check=True,
        env=os.environ,
    )


def setup_django(vendor: str) -> None:
    os.environ.update(
        IDEMPOTENCY_TEST_DATABASE=vendor,
        IDEMPOTENCY_DB_NAME_OVERRIDE=BENCH_DB,
        IDEMPOTENCY_BENCH="1",
        IDEMPOTENCY_CONN_MAX_AGE="600",
        DJANGO_SETTINGS_MODULE="testproject.settings",
    )
    import django

    django.setup()


#: The gunicorn pool: gthread workers x threads (``--workers``, ``--threads``).
POOL = {"workers": 4, "threads": 8}


@contextmanager
def pool() -> Iterator[servers.Server]:
    server = servers.start(
        BENCH_DB,
        **POOL,
        extra_env={"IDEMPOTENCY_BENCH": "1", "IDEMPOTENCY_CONN_MAX_AGE": "600"},
    )
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


def clear_stores() -> None:
    """Delete the orders and keys of the benchmark's database, and its records in Redis."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("demo_order", "django_idempotency_idempotencykey"):
            cursor.execute(f"DELETE FROM {table}")
    try:
        from django_redis import get_redis_connection
    except ImportError:
        return
    redis = get_redis_connection("idempotency")
    records = list(redis.scan_iter("bench:*", count=1000))
    for start in range(0, len(records), 1000):
        redis.delete(*records[start : start + 1000])


# -- the parts ----------------------------------------------------------------------------------


def part_throughput(
    server: servers.Server, variants: list[str], rounds: int, seconds: float, concurrency: int
) -> dict[str, tuple[float, float, float]]:
    """Each protected variant's throughput (the median of its rounds'), p99
    and CPU per request, as ratios to its plain twin; printed as a table."""
    totals = {name: Sample() for name in variants}
    ratios: dict[str, list[float]] = {name: [] for name in variants if baseline(name)}
    for name in variants:  # warm every code path once
        load(server, VARIANTS[name], seconds=0.5, concurrency=concurrency)
    for number in range(rounds):
        order = variants[:]
        random.shuffle(order)
        this_round = {}
        for name in order:
            this_round[name] = load(
                server, VARIANTS[name], seconds=seconds, concurrency=concurrency
            )
            totals[name].add(this_round[name])
        for name in ratios:
            base = this_round[baseline(name) or name].throughput
            ratios[name].append(this_round[name].throughput / base if base else 0.0)
        line = ", ".join(f"{n} {this_round[n].throughput:.0f}/s" for n in variants)
        print(f"  round {number + 1}: {line}")
    print()
    header = f"  {'variant':<26}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}"
    print(header + f"{'x plain req/s':>15}{'x p99':>8}{'x CPU':>8}{'errors':>8}")
    measured: dict[str, tuple[float, float, float]] = {}
    for name in variants:
        sample = totals[name]
        row = (
            f"  {name:<26}{sample.throughput:>8.0f}{sample.percentile(50):>9.1f}"
            f"{sample.percentile(99):>9.1f}{sample.cpu_ms:>12.2f}"
        )
        twin = baseline(name)
        if twin is not None:
            base = totals[twin]
            measured[name] = (
                statistics.median(ratios[name]),
                sample.percentile(99) / base.percentile(99),
                sample.cpu_ms / base.cpu_ms,
            )
            widths = (15, 8, 8)
            row += "".join(f"{r:>{w}.2f}" for r, w in zip(measured[name], widths, strict=True))
        else:
            row += f"{'':>15}{'':>8}{'':>8}"
        print(row + f"{sample.errors:>8}")
    return measured


def part_latency(server: servers.Server, variants: list[str], requests: int) -> None:
    """Unloaded latency (one client): each variant's first requests (fresh
    keys) and, for protected ones, replays of completed keys, against the
    plain twin's first requests. Rounds interleave the variants."""
    from demo.models import Order

    rounds = 5
    per_round = max(1, requests // rounds)
    first = {name: Sample() for name in variants}
    replays = {
        name: Sample()
        for name in variants
        if baseline(name) and name.split("/")[1] not in FLOORS  # floors never replay
    }
    keys = {name: [f"latency-{uuid.uuid4().hex}" for _ in range(per_round)] for name in replays}
    for name in replays:  # complete the keys to replay
        for index, key in enumerate(keys[name]):
            load_one(server, VARIANTS[name], key, index)
    writes_before = Order.objects.count()
    replayed = 0
    for _round in range(rounds):
        order = variants[:]
        random.shuffle(order)
        for name in order:
            first[name].add(sequential(server, VARIANTS[name], per_round))
            if name in replays:
                replays[name].add(sequential(server, VARIANTS[name], per_round, keys[name]))
                replayed += per_round
    replay_writes = (
        Order.objects.count() - writes_before - sum(first[name].requests for name in variants)
    )
    print(
        f"  {'variant':<26}{'first p50':>10}{'p99':>8}{'x plain':>9}"
        f"{'replay p50':>12}{'p99':>8}{'x plain first':>15}"
    )
    for name in variants:
        sample = first[name]
        row = f"  {name:<26}{sample.percentile(50):>10.2f}{sample.percentile(99):>8.2f}"
        twin = baseline(name)
        if twin is not None:
            plain = first[twin].percentile(50)
            row += f"{sample.percentile(50) / plain:>9.2f}"
        if name in replays:
            replay = replays[name]
            row += (
                f"{replay.percentile(50):>12.2f}"
                f"{replay.percentile(99):>8.2f}{replay.percentile(50) / plain:>15.2f}"
            )
        print(row)
    print(f"  (ms; orders written by {replayed} replays: {replay_writes})")


def sequential(
    server: servers.Server, path: str, count: int, keys: list[str] | None = None
) -> Sample:
    """``count`` POSTs one after another on one keep-alive connection: fresh
    keys, or the given ones (replays)."""
    sample = Sample()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    body = json.dumps({"item": "latency"}).encode()
    for n in range(count):
        key = keys[n] if keys else uuid.uuid4().hex
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        sample.latencies.append(time.perf_counter() - started)
        sample.requests += 1
        sample.errors += response.status >= 500
    conn.close()
    return sample


def part_profile(variants: list[str], requests: int) -> None:
    """The package's own Python per request, in-process (Django's test client,
    no HTTP or server): a protected request's time, less the time spent in
    its store round trips (each statement on the key table, each Redis
    command, timed where the driver is called), less its plain twin's time.
    What remains is the package's Python: options, key, fingerprint, scope,
    building the statements, capturing the response, signals and logging."""
    import cProfile
    import pstats

    from django.db import connection
    from django.test import Client

    client = Client()
    in_store = [0.0]

    def timed(call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                in_store[0] += time.perf_counter() - started

        return run

    def statement(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "django_idempotency_idempotencykey" in sql:
            return timed(execute)(sql, params, many, context)
        return execute(sql, params, many, context)

    try:
        from django_redis import get_redis_connection
    except ImportError:
        pass
    else:
        redis = get_redis_connection("idempotency")
        redis.execute_command = timed(redis.execute_command)  # type: ignore[method-assign]

    def post(path: str) -> tuple[float, float]:
        in_store[0] = 0.0
        started = time.perf_counter()
        response = client.post(
            path,
            b'{"item": "profile"}',
            content_type="application/json",
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        elapsed = time.perf_counter() - started
        assert response.status_code < 500, response.content
        return elapsed, in_store[0]

    protected = [name for name in variants if baseline(name) and "atomic" not in name]
    with connection.execute_wrapper(statement):
        for name in variants:  # warm up
            for _ in range(20):
                post(VARIANTS[name])
        print(f"  {'variant':<26}{'request us':>11}{'plain us':>10}{'store us':>10}{'own us':>8}")
        for name in protected:
            twin = baseline(name)
            assert twin is not None
            plain, total, store = [], [], []
            for _ in range(requests):
                plain.append(post(VARIANTS[twin])[0])
                elapsed, spent = post(VARIANTS[name])
                total.append(elapsed)
                store.append(spent)
            median = statistics.median
            own = median([t - s for t, s in zip(total, store, strict=True)]) - median(plain)
            print(
                f"  {name:<26}{median(total) * 1e6:>11.0f}{median(plain) * 1e6:>10.0f}"
                f"{median(store) * 1e6:>10.0f}{own * 1e6:>8.0f}"
            )
        for name in protected[:1]:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(200):
                post(VARIANTS[name])
            profiler.disable()
            stats = pstats.Stats(profiler)
            print(f"  the package's functions in {name}, by own time (cProfile, 200 requests):")
            entries = stats.stats.items()  # type: ignore[attr-defined]
            rows = [
                (tottime / 200 * 1e6, f"{Path(file).name}:{line} {function}")
                for (file, line, function), (*_calls, tottime, _cum, _by) in entries
                if "django_idempotency" in file
            ]
            for micros, where in sorted(rows, reverse=True)[:8]:
                print(f"    {micros:6.1f} us  {where}")


def part_engine(requests: int) -> None:
    """The package's own Python per request, alone: ``Idempotency.handle``
    around a view that does no I/O, on a request that has its user already,
    measured two ways.

    *Less the driver*: the store's round trips happen, and the time inside
    the driver is taken off (each statement as Django's cursor hands it to
    psycopg or PyMySQL, each redis-py ``Script`` call). What remains
    includes what the round trips cost the code around them (a cold CPU
    cache after each system call, the GIL taken back).

    *Without I/O*: each driver call answered at once with what it answers
    to a fresh key (``Script.__call__``, and Django's ``CursorWrapper.execute``
    with a row count of one), so that nothing but the package's Python and
    what it calls in Django runs: options, key, fingerprint, scope, the
    store's statements and their parameters, Django's cursors, capturing the
    response, leases, signals and logging. A measurement, not a test: the
    test suite never answers for a store."""
    from django.contrib.auth.models import AnonymousUser
    from django.db import connection
    from django.db.backends.utils import CursorWrapper
    from django.http import HttpResponse
    from django.test import RequestFactory
    from redis.commands.core import Script

    from django_idempotency.engine import Idempotency
    from django_idempotency.storage import DatabaseStorage, RedisStorage
    from django_idempotency.storage.redis import CLAIM

    factory = RequestFactory()
    in_driver = [0.0]
    script_call, cursor_execute = Script.__call__, CursorWrapper.execute

    def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            in_driver[0] += time.perf_counter() - started

    def statement(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        return timed(execute, sql, params, many, context)

    def view() -> HttpResponse:
        return HttpResponse(b'{"id": 1, "status": "created"}', status=201)

    def own_time(store: Any) -> list[float]:
        protection = Idempotency({"storage": store})
        own = []
        for n in range(requests + 200):
            request = factory.post(
                "/bench/engine/",
                b'{"item": "engine"}',
                content_type="application/json",
                headers={"Idempotency-Key": uuid.uuid4().hex},
            )
            request.user = AnonymousUser()
            in_driver[0] = 0.0
            started = time.perf_counter()
            protection.handle(request, view)
            if n >= 200:  # after warming up
                own.append(time.perf_counter() - started - in_driver[0])
        return own

    stores = {
        "database": DatabaseStorage(),
        "redis": RedisStorage(cache_alias="idempotency", key_prefix="bench"),
    }
    measured: dict[tuple[str, str], list[float]] = {}
    Script.__call__ = lambda self, *a, **k: timed(script_call, self, *a, **k)  # type: ignore[method-assign]
    try:
        with connection.execute_wrapper(statement):
            for name, store in stores.items():
                measured[name, "less the driver"] = own_time(store)
        Script.__call__ = lambda self, *a, **k: [1] if self.script == CLAIM else 1  # type: ignore[method-assign]
        CursorWrapper.execute = lambda self, sql, params=None: None  # type: ignore[method-assign]
        CursorWrapper.rowcount = 1  # type: ignore[attr-defined]
        for name, store in stores.items():
            measured[name, "without I/O"] = own_time(store)
    finally:
        Script.__call__ = script_call  # type: ignore[method-assign]
        CursorWrapper.execute = cursor_execute  # type: ignore[method-assign]
        with contextlib.suppress(AttributeError):
            del CursorWrapper.rowcount  # type: ignore[attr-defined]
    for (name, how), own in measured.items():
        print(
            f"  {name} store, {how}: {statistics.median(own) * 1e6:.0f} us per request "
            f"(p10 {sorted(own)[len(own) // 10] * 1e6:.0f} us)"
        )


def load_one(server: servers.Server, path: str, key: str, index: int) -> int:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    body = json.dumps({"item": f"bench-{index}"}).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    conn.request("POST", path, body=body, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


#: The processes of :func:`part_designs`: enough to keep both cores busy
#: while some wait for their commits.
DESIGN_PROCESSES = 8


def part_designs(vendor: str, seconds: float) -> None:
    """PostgreSQL: designs measured, not built, on their SQL alone (no HTTP
    server, no Django): a protected minimal view's statements as the store
    sends them (claim, the view's INSERT and the completion, each committed
    on its own), and the same with one change each: the claim as one
    statement that also reads the record it ran into (``WITH ... INSERT ...
    RETURNING`` and a ``UNION``); server-side prepared statements (psycopg's
    ``prepare=True``); one commit for all three, where duplicates would wait
    on the unique index for the first request's commit instead of being
    answered at once, and the same with that wait bounded (``SET LOCAL
    lock_timeout`` before the claim, and back to the default after it, so
    that the view's own statements wait as they would without it). Under
    load: 8 processes, each on its own connection, in interleaved rounds;
    the machine's CPU per request, as in ``throughput``."""
    if vendor != "postgresql":
        return
    import multiprocessing

    from django.db import connection

    from django_idempotency.storage.statements import Row, Statements

    statements = Statements(connection)
    # The one-statement claim: the row this claim wrote, else the record it
    # ran into (a record committed after the statement began is invisible
    # to its read, so the store would then read it once more).
    nulls = ", ".join(["NULL"] * len(Row._fields))  # what the read selects
    in_one = (
        f"WITH claimed AS ({statements.claim} RETURNING 1) SELECT TRUE, {nulls} "
        f"FROM claimed UNION ALL {statements.read.replace('SELECT ', 'SELECT FALSE, ', 1)} "
        "AND NOT EXISTS (SELECT 1 FROM claimed)"
    )
    designs = {
        "plain view (one INSERT)": {},
        "as built: claim, INSERT, completion": {"protected": True},
        "claim in one statement (WITH, UNION)": {"protected": True, "claim_sql": in_one},
        "prepared statements (prepare=True)": {"protected": True, "prepare": True},
        "one commit for all three": {"protected": True, "one_commit": True},
        "one commit, the claim's wait bounded": {
            "protected": True,
            "one_commit": True,
            "bounded": True,
        },
    }
    context = multiprocessing.get_context("fork")
    totals = {name: Sample() for name in designs}
    for _round in range(3):
        for name in random.sample(list(designs), len(designs)):
            done = context.Queue()
            workers = [
                context.Process(target=_design_worker, args=(seconds, done), kwargs=designs[name])
                for _ in range(DESIGN_PROCESSES)
            ]
            cpu_before, started = machine_cpu_seconds(), time.perf_counter()
            for worker in workers:
                worker.start()
            count = sum(done.get() for _ in workers)
            for worker in workers:
                worker.join()
            totals[name].add(
                Sample(
                    requests=count,
                    seconds=time.perf_counter() - started,
                    cpu=machine_cpu_seconds() - cpu_before,
                )
            )
    base = totals["as built: claim, INSERT, completion"]
    print(f"  {'design':<42}{'req/s':>8}{'CPU ms/req':>12}{'x as built':>12}")
    for name, sample in totals.items():
        ratio = sample.throughput / base.throughput
        print(f"  {name:<42}{sample.throughput:>8.0f}{sample.cpu_ms:>12.3f}{ratio:>12.2f}")


def _design_worker(
    seconds: float,
    done: Any,
    *,
    protected: bool = False,
    claim_sql: str | None = None,
    prepare: bool | None = None,
    one_commit: bool = False,
    bounded: bool = False,
) -> None:
    """One process of :func:`part_designs`: a design's statements in a loop."""
    import psycopg
    from django.db import connection

    from django_idempotency.records import RequestKey
    from django_idempotency.responses import StoredResponse
    from django_idempotency.storage.base import new_token
    from django_idempotency.storage.statements import Statements

    statements = Statements(connection)
    claim = claim_sql or statements.claim
    response = StoredResponse(status=201, body=b'{"id": 1, "status": "created"}')
    order = "INSERT INTO demo_order (item, quantity, created_at) VALUES (%s, 1, now())"
    count = 0
    with psycopg.connect(
        f"host=127.0.0.1 user=postgres dbname={BENCH_DB}", autocommit=True
    ) as conn:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            if protected:
                key = RequestKey(scope="", key=uuid.uuid4().hex, fingerprint="f" * 64)
                token = new_token()
                params = statements.claim_params(key, token, ttl=86400, lease=30)
                if claim_sql:
                    params = (*params, key.digest)
                with conn.transaction() if one_commit else contextlib.nullcontext():
                    if bounded:
                        conn.execute("SET LOCAL lock_timeout = '1s'")
                    conn.execute(claim, params, prepare=prepare)
                    if bounded:
                        conn.execute("SET LOCAL lock_timeout TO DEFAULT")
                    conn.execute(order, ("designs",), prepare=prepare)
                    complete = statements.complete_params(key, token, response)
                    conn.execute(statements.complete, complete, prepare=prepare)
            else:
                conn.execute(order, ("designs",), prepare=prepare)
            count += 1
    done.put(count)


def part_round_trips(vendor: str) -> None:
    """Statements and Redis commands per request, counted in-process."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()

    def post(path: str, key: str) -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            response = client.post(
                path,
                json.dumps({"item": "round-trip"}),
                content_type="application/json",
                headers={"Idempotency-Key": key},
            )
            assert response.status_code < 500, response.content
        return [q["sql"] for q in queries.captured_queries]

    plain = post(VARIANTS["minimal/plain"], uuid.uuid4().hex)
    key = uuid.uuid4().hex
    fresh = post(VARIANTS["minimal/database"], key)
    replay = post(VARIANTS["minimal/database"], key)
    touches_orders = any("demo_order" in sql for sql in replay)
    print(
        f"  database store ({vendor}): plain view {len(plain)} statements, protected "
        f"{len(fresh)} (+{len(fresh) - len(plain)} for the key), replay {len(replay)} "
        f"(touches the view's table: {'yes' if touches_orders else 'no'})"
    )
    try:
        from django_redis import get_redis_connection
    except ImportError:
        return
    redis = get_redis_connection("idempotency")

    def commands() -> dict[str, int]:
        stats = redis.info("commandstats")
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}

    post(VARIANTS["minimal/redis"], uuid.uuid4().hex)  # connections opened, scripts loaded
    for label, same_key in (("fresh", False), ("replay", True)):
        key = uuid.uuid4().hex
        if same_key:
            post(VARIANTS["minimal/redis"], key)
        before = commands()
        sql = post(VARIANTS["minimal/redis"], key)
        after = commands()
        calls = {
            name: count - before.get(name, 0)
            for name, count in after.items()
            if name != "info" and count != before.get(name, 0)
        }
        # Commands the scripts run count in commandstats too; the client's
        # round trips are its EVALSHA (or EVAL) calls and any other command.
        trips = sum(c for n, c in calls.items() if n in ("evalsha", "eval"))
        inside = ", ".join(
            f"{n} {c}" for n, c in sorted(calls.items()) if n not in ("evalsha", "eval")
        )
        print(
            f"  redis store, {label}: {trips} round trips (EVALSHA); inside the scripts: "
            f"{inside}; {len(sql)} SQL statements (the view's)"
        )


def part_storage(vendor: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if vendor == "postgresql":
            # Without the dead rows of earlier runs (purges leave them behind).
            cursor.execute("VACUUM FULL django_idempotency_idempotencykey")
            cursor.execute(
                "SELECT avg(pg_column_size(k.*)), count(*), "
                "pg_total_relation_size('django_idempotency_idempotencykey') "
                "FROM django_idempotency_idempotencykey k WHERE response_body IS NOT NULL"
            )
            row_bytes, rows, total = cursor.fetchone()
            print(
                f"  database row ({vendor}): {float(row_bytes):.0f} bytes on average; "
                f"table with indexes: {total / max(rows, 1):.0f} bytes per key over {rows} keys"
            )
        else:
            cursor.execute("OPTIMIZE TABLE django_idempotency_idempotencykey")
            cursor.fetchall()
            cursor.execute("ANALYZE TABLE django_idempotency_idempotencykey")
            cursor.fetchall()
            cursor.execute(
                "SELECT avg_row_length, data_length + index_length, table_rows "
                "FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_name = 'django_idempotency_idempotencykey'"
            )
            avg_row, total, rows = cursor.fetchone()
            print(
                f"  database row ({vendor}): {avg_row} bytes on average; "
                f"table with indexes: {total / max(rows, 1):.0f} bytes per key over {rows} keys"
            )
    try:
        from django_redis import get_redis_connection
    except ImportError:
        return
    redis = get_redis_connection("idempotency")
    sizes = [redis.memory_usage(k) for k in list(redis.scan_iter("bench:*", count=1000))[:500]]
    sizes = [s for s in sizes if s]
    if sizes:
        print(f"  redis record: {statistics.mean(sizes):.0f} bytes on average ({len(sizes)} keys)")


def part_leases(vendor: str, held: int = 1000) -> None:
    """What keeping leases alive costs, per store, in this process.

    A request faster than a third of its lease never reaches the store for
    it: its cost is registering and dropping its lease with the renewer
    (timed here against the plain view's request). A slower one costs one
    renewal per third of the lease, made by the process's renewer thread:
    timed here one by one against a completion, and as one round over
    ``held`` live claims (what the renewer does every third of a lease)."""
    from django.test import Client

    from django_idempotency import leases
    from django_idempotency.responses import StoredResponse
    from django_idempotency.storage import BaseStorage, DatabaseStorage, RequestKey

    client = Client()
    samples = 300
    started = time.perf_counter()
    for _ in range(samples):
        client.post(
            VARIANTS["minimal/plain"],
            json.dumps({"item": "lease"}),
            content_type="application/json",
        )
    plain_us = (time.perf_counter() - started) / samples * 1e6

    stores: list[tuple[str, BaseStorage]] = [(f"database ({vendor})", DatabaseStorage())]
    try:
        from django_idempotency.storage import RedisStorage
    except ImportError:
        pass
    else:
        stores.append(("redis", RedisStorage(cache_alias="idempotency", key_prefix="bench")))

    key = RequestKey(scope="bench-leases", key="hold", fingerprint="fp")
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        lease = leases.Lease(
            stores[0][1], key, "token", length=30.0, limit=300.0, since=time.monotonic()
        ).start()
        lease.stop()
    hold_us = (time.perf_counter() - started) / rounds * 1e6
    print(
        f"  a request faster than a third of its lease: {hold_us:.1f} us to hold and drop its "
        f"lease, {hold_us / plain_us:.2%} of the plain view's request ({plain_us:.0f} us, "
        "test client); no store round trip"
    )
    response = StoredResponse(status=201, body=b"x" * 1024)
    for label, store in stores:
        claims = []
        for n in range(held):
            request_key = RequestKey(scope="bench-leases", key=uuid.uuid4().hex, fingerprint="fp")
            claim = store.claim(request_key, ttl=600, lease=600)
            assert claim.token is not None
            claims.append((request_key, claim.token, n))
        started = time.perf_counter()
        for request_key, token, _n in claims:
            store.renew(request_key, token, lease=600)
        round_s = time.perf_counter() - started
        started = time.perf_counter()
        for request_key, token, _n in claims:
            store.complete(request_key, token, response)
        complete_s = time.perf_counter() - started
        print(
            f"  {label}: one renewal {round_s / held * 1e3:.3f} ms "
            f"({round_s / complete_s:.2f}x a completion); a round over {held} live claims "
            f"{round_s * 1e3:.0f} ms, {round_s / 10:.1%} of the renewer's time at the "
            "default LOCK_TIMEOUT (a round every 10 s)"
        )


def part_storm(server: servers.Server, keys: int = 50, copies: int = 16) -> None:
    from demo.models import Order

    run = uuid.uuid4().hex[:8]
    barriers = {n: threading.Barrier(copies) for n in range(keys)}
    statuses: list[int] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        barriers[n].wait(timeout=30)
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        body = json.dumps({"item": f"storm-{run}-{n}", "quantity": 1}).encode()
        conn.request(
            "POST",
            "/slow/orders/conflict/?delay=0.3",
            body=body,
            headers={"Content-Type": "application/json", "Idempotency-Key": f"{run}-{n}"},
        )
        status = conn.getresponse().status
        conn.close()
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(keys) for _ in range(copies)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    rows = [Order.objects.filter(item=f"storm-{run}-{n}").count() for n in range(keys)]
    print(
        f"  {keys} keys x {copies} copies in {elapsed:.1f} s: rows per key "
        f"min {min(rows)} max {max(rows)}; answers "
        + ", ".join(f"{s}: {statuses.count(s)}" for s in sorted(set(statuses)))
    )


def part_purge(server: servers.Server, rows: int, seconds: float, concurrency: int) -> None:
    """PostgreSQL: a million expired keys purged, alone and under traffic."""
    from django.db import connection

    def fill(count: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO django_idempotency_idempotencykey (digest, scope, key, "
                "fingerprint, state, owner, locked_until, response_status, "
                "response_headers, response_body, replayable, created_at, expires_at) "
                "SELECT md5('purge' || i) || md5('x' || i), 'bench|purge/', 'purge-' || i, "
                "md5(i::text), 'completed', '', NULL, 201, '[]'::jsonb, "
                "convert_to(repeat('x', 200), 'UTF8'), true, "
                "now() - interval '2 days', now() - interval '1 day' "
                "FROM generate_series(1, %s) i",
                [count],
            )

    def purge() -> tuple[float, int]:
        manage = str(ROOT / "testproject" / "manage.py")
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, manage, "purge_idempotency_keys", "--batch-size", "5000"],
            env=os.environ,
            stdout=subprocess.DEVNULL,
        )
        peak = 0
        while process.poll() is None:
            peak = max(peak, _rss_kib(process.pid))
            time.sleep(0.05)
        return time.monotonic() - started, peak

    fill(rows // 10)
    small_time, small_peak = purge()
    fill(rows)
    big_time, big_peak = purge()
    print(
        f"  {rows:,} expired keys purged in {big_time:.1f} s, peak RSS {big_peak / 1024:.0f} MiB; "
        f"{rows // 10:,} in {small_time:.1f} s, peak {small_peak / 1024:.0f} MiB "
        f"(x{big_peak / max(small_peak, 1):.2f} memory for 10x the keys)"
    )
    quiet = load(server, VARIANTS["minimal/database"], seconds=seconds, concurrency=concurrency)
    fill(rows)
    result: dict[str, Any] = {}
    purger = threading.Thread(target=lambda: result.update(run=purge()))
    purger.start()
    time.sleep(1.0)
    busy = load(server, VARIANTS["minimal/database"], seconds=seconds, concurrency=concurrency)
    purger.join()
    print(
        f"  under a purge, protected POSTs: {busy.throughput:.0f}/s "
        f"(x{busy.throughput / quiet.throughput:.2f} of {quiet.throughput:.0f}/s without), "
        f"p99 {busy.percentile(99):.1f} ms (vs {quiet.percentile(99):.1f}), "
        f"{busy.errors} errors; that purge took {result['run'][0]:.1f} s"
    )


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- main ---------------------------------------------------------------------------------------


#: What each protected variant is called on the chart.
LABELS = {
    "database": "@idempotent, database store",
    "atomic": "@idempotent(atomic=True)",
    "redis": "@idempotent, Redis store",
    "middleware": "IdempotencyMiddleware, database store",
    "drf-database": "DRF mixin, database store",
    "drf-redis": "DRF mixin, Redis store",
    "floor-database": "the database store's round trips alone",
    "floor-redis": "the Redis store's round trips alone",
    "floor-one-commit": "the database store's statements alone, one commit",
}


def label(variant: str) -> str:
    view, form = variant.split("/")
    return f"{LABELS[form]} ({view} view)"


def targets(variant: str, vendor: str) -> tuple[float | None, float | None, float | None]:
    """The project's targets (throughput, p99, CPU ratios) for a variant: Redis
    at least 0.85x with p99 at most 1.3x; the database store on PostgreSQL at
    least 0.6x with CPU at most 1.7x."""
    if variant.endswith("redis"):
        return (0.85, 1.3, None)
    if vendor == "postgresql":
        return (0.6, None, 1.7)
    return (None, None, None)


def write_chart(
    path: Path, vendor: str, measured: dict[str, tuple[float, float, float]], args: Any
) -> None:
    from plot import Row, ratio_chart

    rows = [Row(label(name), ratios, targets(name, vendor)) for name, ratios in measured.items()]
    title = (
        f"{vendor}: protected vs plain, fresh keys ({args.rounds} rounds x "
        f"{args.duration:g} s, {args.concurrency} clients, 4 gunicorn workers)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ratio_chart(title, rows))
    print(f"  chart: {path}")


#: The parts of a run, in their order.
PARTS = (
    "throughput",
    "latency",
    "profile",
    "designs",
    "round-trips",
    "storage",
    "leases",
    "storm",
    "purge",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="postgresql,mariadb")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per variant per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--purge-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--views", default=",".join(VIEWS), help=f"views to measure (default: {','.join(VIEWS)})"
    )
    parser.add_argument("--workers", type=int, default=POOL["workers"], help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=POOL["threads"], help="threads per worker")
    parser.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="unloaded requests per variant (latency, profile)",
    )
    parser.add_argument(
        "--forms", default=",".join(FORMS), help=f"forms to measure (default: {','.join(FORMS)})"
    )
    parser.add_argument(
        "--prepared",
        action="store_true",
        help="PostgreSQL: server-side binding and prepared statements "
        "(OPTIONS server_side_binding and prepare_threshold)",
    )
    parser.add_argument(
        "--plot", metavar="DIR", type=Path, help="write DIR/<database>.svg, a chart of the ratios"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"the parts to run, comma-separated (default: all of {', '.join(PARTS)})",
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    if set(views) - set(VIEWS):
        parser.error(f"unknown views: {', '.join(sorted(set(views) - set(VIEWS)))}")
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    if set(forms) - set(FORMS):
        parser.error(f"unknown forms: {', '.join(sorted(set(forms) - set(FORMS)))}")
    forms += sorted({TWIN[form] for form in forms if form in TWIN} - set(forms))
    vendors = [v.strip() for v in args.databases.split(",") if v.strip()]
    if len(vendors) > 1:
        # One Django setup per process: each database in a run of its own.
        others = [
            f"--rounds={args.rounds}",
            f"--duration={args.duration}",
            f"--concurrency={args.concurrency}",
            f"--purge-rows={args.purge_rows}",
            f"--parts={args.parts}",
            f"--views={args.views}",
            f"--forms={args.forms}",
            *(["--prepared"] if args.prepared else []),
            f"--requests={args.requests}",
            f"--workers={args.workers}",
            f"--threads={args.threads}",
            *([f"--plot={args.plot}"] if args.plot else []),
        ]
        for vendor in vendors:
            subprocess.run([sys.executable, __file__, f"--databases={vendor}", *others], check=True)
        return
    vendor = vendors[0]
    POOL.update(workers=args.workers, threads=args.threads)
    if args.prepared:
        os.environ["IDEMPOTENCY_PG_PREPARED"] = "1"  # read by the test project's settings
    setup_django(vendor)
    prepare_database(vendor)
    clear_stores()
    from django.conf import settings

    variants = [
        name
        for name in VARIANTS
        if name.split("/")[0] in views
        and name.split("/")[1] in forms
        and ("redis" not in name or settings.HAS_REDIS)
        and ("drf" not in name or settings.HAS_DRF)
    ]
    print(
        f"\n=== {vendor}: {args.rounds} rounds x {args.duration:g} s per variant, "
        f"{args.concurrency} client threads, gunicorn {args.workers} workers x {args.threads} "
        "threads" + (", prepared statements" if args.prepared else "")
    )
    try:
        with pool() as server:
            if "throughput" in parts:
                print("\n-- throughput, latency and CPU, fresh keys")
                measured = part_throughput(
                    server, variants, args.rounds, args.duration, args.concurrency
                )
                if args.plot:
                    write_chart(args.plot / f"{vendor}.svg", vendor, measured, args)
            if "latency" in parts:
                print("\n-- unloaded latency: first requests and replays, one client")
                part_latency(server, variants, args.requests)
            if "profile" in parts:
                print("\n-- the package's own Python per request, in-process")
                part_profile(variants, args.requests)
                print("\n-- the package's own Python alone, around a view without I/O")
                part_engine(args.requests)
            if "designs" in parts and vendor == "postgresql":
                print("\n-- designs measured on their SQL alone (PostgreSQL)")
                part_designs(vendor, args.duration)
            if "round-trips" in parts:
                print("\n-- round trips per request")
                part_round_trips(vendor)
            if "storage" in parts:
                print("\n-- bytes per stored key (1 KB JSON response)")
                part_storage(vendor)
            if "leases" in parts:
                print("\n-- leases kept alive")
                part_leases(vendor)
            if "storm" in parts:
                print("\n-- duplicate storm")
                part_storm(server)
            if "purge" in parts and vendor == "postgresql" and args.purge_rows:
                print("\n-- purge")
                clear_stores()
                part_purge(server, args.purge_rows, args.duration, args.concurrency)
    finally:
        clear_stores()


if __name__ == "__main__":
    main()
