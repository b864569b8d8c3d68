"""Chaos: every fault at once, for a while, against a real server pool.

For ``IDEMPOTENCY_CHAOS_SECONDS`` (30 by default) per configuration, client
threads work through keys one after another while, at random moments:

* gunicorn workers are killed (SIGKILL; gunicorn starts new ones);
* the store's connections are cut through the TCP proxy (:mod:`proxy`) for
  0.5 to 1.2 s;
* ``manage.py purge_idempotency_keys`` runs, with the pool's settings, on
  records that expire 20 s after their claim (``demo.faults.CHAOS_TTL``);
* clients read an answer and then act as if it never arrived, retrying;
* clients give up waiting after 1 to 3 s and retry the same request;
* views last 0 to 5 s (``X-Delay``, chosen per key and not part of the
  request's fingerprint), past their 4 s lease for some keys.

A client operation is one key, retried (after a 409, a 503, a timeout or a
lost connection) until it gets a final answer, a 2xx or another 4xx than 409,
or gives up, well before the key's record can expire. Each run of the view
records itself (``demo.models.Execution``: its worker's pid, when it started,
returned, and had its answer stored) and answers with the run's id; the test
records every kill and every cut. Then, per key whose view ran more than
once, each earlier run is explained by what happened to it: its worker was
killed while it ran or before its answer was stored ("worker killed"), the
store was cut while it ran ("store cut"), it outlived its lease ("lease"),
the next run began after the record had expired ("expired": a request the
pool held that long), or nothing ("unexplained").

The verdict: without atomic mode, a view may run again only after a worker
died running it (the documented cost of a crash); in atomic mode, no key ever
has two committed runs. In every mode, no 5xx answers but 503, no final 4xx,
and every 2xx answer for a key names the same, recorded run. Gave-ups are
reported, not failed: they are what a client sees of a key run again and
again. A record that expired between two runs excuses the second.

Configurations: the database store in default and atomic mode, and the Redis
store (which has no atomic mode), on the server database of the run
(PostgreSQL or MariaDB; skipped on SQLite, like the other reliability tests).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
import servers
from django.db import connection
from proxy import Proxy, store_behind_proxy

from demo.faults import CHAOS_LOCK_TIMEOUT, CHAOS_TTL
from demo.models import Execution

#: How long the faults go on, per configuration.
CHAOS_SECONDS = float(os.environ.get("IDEMPOTENCY_CHAOS_SECONDS", "30"))

PATHS = {"default": "/faults/chaos/orders/", "atomic": "/faults/chaos/atomic/orders/"}

#: The pool, and the clients that keep it busy.
WORKERS = 4
THREADS = 16
CLIENTS = 32

#: Per key, how long its view takes, in seconds.
MAX_DELAY = 5.0
#: Per request, how long a client waits for the answer.
CLIENT_TIMEOUT = (1.0, 3.0)
#: Between a client's retries.
RETRY_PAUSE = (0.1, 0.4)
#: The chance that a final answer is dropped, and how many a key may lose.
DROP_CHANCE = 0.25
MAX_DROPS = 2
#: A client stops retrying a key after this long; its last request then ends
#: before the key's record expires, so a retry never meets a purged key.
GIVE_UP_AFTER = 12.0
assert GIVE_UP_AFTER + CLIENT_TIMEOUT[1] + 1 < CHAOS_TTL

#: Between kills; a kill spares the pool's last ready worker.
KILL_EVERY = (1.5, 4.0)
#: Between cuts of the store, and how long each lasts.
CUT_EVERY = (1.5, 4.5)
#: A cut stays well inside the lease: renewed every third of it, a lease
#: outlasts the longest cut by more than a second however the two fall, so
#: that only the faults the verdict names, not a slow moment of the machine,
#: make a view run twice.
CUT_FOR = (0.5, 1.2)
#: Between the end of a purge and the start of the next.
PURGE_EVERY = 3.0
PURGE_BATCH = 50

#: A cut this close to a run counts against it: the claim comes just before
#: the run starts, and the cut takes effect just after it is recorded.
CUT_GRACE = 0.25

#: After the last request, the longest view and this margin, before the
#: runs are read.
SETTLE_MARGIN = 3.0
#: A run that begins this long after its key's last request was sent is
#: reported: the pool held the request (all its threads busy, or waiting).
LATE_START = 5.0

#: The bound of one configuration's test: the faults, the last operations,
#: the pool's start, and a margin.
TEST_TIMEOUT = CHAOS_SECONDS + GIVE_UP_AFTER + 150

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(TEST_TIMEOUT),
]

MANAGE_PY = servers.TESTPROJECT_DIR / "manage.py"
DELETED = re.compile(r"Deleted (\d+) expired key")
#: A warning or error of the package, as Python's last-resort handler writes
#: it to the pool's log: the message up to its details.
PACKAGE_MESSAGE = re.compile(r"(Idempotency [^(;.]*?)\s*[(;.]")

#: The result rows of the configurations run so far, printed again at the end.
TABLE: list[str] = []
TABLE_HEADER = (
    "| store | mode | operations | keys whose view ran twice | causes |\n"
    "| --- | --- | --- | --- | --- |"
)


# -- what happened --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One request as its client saw it. ``status`` None: no answer (a
    timeout, or the connection lost with a killed worker)."""

    sent: float
    status: int | None
    execution: int | None = None
    replayed: bool = False
    dropped: bool = False

    @property
    def final(self) -> bool:
        """A 2xx or a 4xx other than 409: the client stops retrying."""
        status = self.status or 0
        return 200 <= status < 300 or (400 <= status < 500 and status != 409)


@dataclass
class Operation:
    """One key, from its first request until a final answer, or given up."""

    key: str
    delay: float
    replies: list[Reply] = field(default_factory=list)
    done: bool = False


@dataclass(frozen=True)
class Kill:
    pid: int
    at: float


@dataclass(frozen=True)
class Cut:
    start: float
    end: float


@dataclass(frozen=True)
class Purge:
    start: float
    end: float
    returncode: int
    deleted: int
    #: The last line the command wrote to stderr (why it failed).
    error: str


@dataclass(frozen=True)
class Run:
    """One execution of the view, as recorded in the database."""

    pk: int
    key: str
    pid: int
    started: float
    #: When the view returned, and when the protection around it had stored
    #: its answer, or failed to (None: the run was killed before).
    finished: float | None
    answered: float | None

    @property
    def end(self) -> float | None:
        return self.answered if self.answered is not None else self.finished


@dataclass
class Chaos:
    """Everything the faults did, recorded as it happened (wall-clock times,
    which the workers' records use too: one machine, one clock)."""

    kills: list[Kill] = field(default_factory=list)
    cuts: list[Cut] = field(default_factory=list)
    purges: list[Purge] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, items: list[Any], item: Any) -> None:
        with self.lock:
            items.append(item)


# -- the rig --------------------------------------------------------------------------------------


@dataclass
class Rig:
    store: str
    proxy: Proxy
    server: servers.Server
    env: dict[str, str]


@pytest.fixture(scope="module")
def rig(
    request: pytest.FixtureRequest, django_db_setup: None, django_db_blocker: Any
) -> Iterator[Rig]:
    """A gunicorn pool serving ``demo.faults`` with its store behind a proxy:
    the test database reached through another port (``request.param``
    ``"database"``), or Redis (``"redis"``)."""
    if connection.vendor == "sqlite":
        pytest.skip("chaos tests run against server databases (PostgreSQL, MariaDB)")
    if request.param == "redis":
        pytest.importorskip("django_redis", reason="the redis extra is not installed")
    name = connection.settings_dict["NAME"]
    with store_behind_proxy(request.param, "chaos") as store:
        env = {"IDEMPOTENCY_TEST_FAULTS": "1", **store.env}
        server = servers.start(name, workers=WORKERS, threads=THREADS, extra_env=env)
        try:
            yield Rig(request.param, store.proxy, server, servers.environment(name, env))
        finally:
            server.stop()
            server.cleanup()


@pytest.fixture(scope="module", autouse=True)
def _print_table() -> Iterator[None]:
    yield
    if TABLE:
        print("\n" + "\n".join([TABLE_HEADER, *TABLE]))


# -- the clients ----------------------------------------------------------------------------------


def post(rig: Rig, path: str, key: str, body: bytes, delay: float, timeout: float) -> Reply:
    sent = time.time()
    conn = http.client.HTTPConnection(rig.server.host, rig.server.port, timeout=timeout)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "X-Delay": f"{delay:.2f}",
                "Connection": "close",
            },
        )
        response = conn.getresponse()
        content = response.read()
    except (OSError, http.client.HTTPException):
        return Reply(sent, None)
    finally:
        conn.close()
    return Reply(
        sent,
        response.status,
        execution=execution_id(content) if 200 <= response.status < 300 else None,
        replayed=response.getheader("Idempotent-Replayed") == "true",
    )


def execution_id(body: bytes) -> int | None:
    try:
        value = json.loads(body).get("execution")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def operate(rig: Rig, path: str, key: str, rng: random.Random) -> Operation:
    """One key, retried as an impatient client retries, with the same body
    and query string, until a final answer that is not dropped, or until
    :data:`GIVE_UP_AFTER` has passed."""
    operation = Operation(key, delay=round(rng.uniform(0.0, MAX_DELAY), 2))
    body = json.dumps({"item": key, "quantity": 1}).encode()
    url = f"{path}?item={key}"
    deadline = time.monotonic() + GIVE_UP_AFTER
    drops = 0
    while time.monotonic() < deadline:
        reply = post(rig, url, key, body, operation.delay, rng.uniform(*CLIENT_TIMEOUT))
        if reply.final and drops < MAX_DROPS and rng.random() < DROP_CHANCE:
            drops += 1
            reply = Reply(reply.sent, reply.status, reply.execution, reply.replayed, dropped=True)
        operation.replies.append(reply)
        if reply.final and not reply.dropped:
            operation.done = True
            break
        time.sleep(rng.uniform(*RETRY_PAUSE))
    return operation


def client(rig: Rig, path: str, prefix: str, chaos: Chaos, stop: threading.Event) -> None:
    """One client: a key after another, until told to stop."""
    rng = random.Random()
    number = 0
    while not stop.is_set():
        chaos.record(chaos.operations, operate(rig, path, f"{prefix}-{number}", rng))
        number += 1


# -- the faults -----------------------------------------------------------------------------------


def kill_workers(rig: Rig, chaos: Chaos, stop: threading.Event) -> None:
    rng = random.Random()
    while not stop.wait(rng.uniform(*KILL_EVERY)):
        workers = rig.server.worker_pids()
        if len(workers) < 2:
            continue  # the others are still starting
        pid = rng.choice(workers)
        os.kill(pid, signal.SIGKILL)
        chaos.record(chaos.kills, Kill(pid, time.time()))


def cut_store(rig: Rig, chaos: Chaos, stop: threading.Event) -> None:
    rng = random.Random()
    while not stop.wait(rng.uniform(*CUT_EVERY)):
        start = time.time()
        rig.proxy.cut()
        try:
            stop.wait(rng.uniform(*CUT_FOR))
        finally:
            rig.proxy.restore()
            chaos.record(chaos.cuts, Cut(start, time.time()))


def purge(rig: Rig, chaos: Chaos, stop: threading.Event) -> None:
    """``manage.py purge_idempotency_keys`` in the pool's environment: the
    same store, reached through the same proxy."""
    while not stop.wait(PURGE_EVERY):
        start = time.time()
        result = subprocess.run(
            [
                sys.executable,
                str(MANAGE_PY),
                "purge_idempotency_keys",
                f"--batch-size={PURGE_BATCH}",
            ],
            cwd=servers.TESTPROJECT_DIR,
            env=rig.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found = DELETED.search(result.stdout)
        deleted = int(found.group(1)) if found else 0
        error = (result.stderr.strip().splitlines() or [""])[-1]
        chaos.record(chaos.purges, Purge(start, time.time(), result.returncode, deleted, error))


def unleash(rig: Rig, path: str, prefix: str) -> Chaos:
    """Run the clients and the faults for :data:`CHAOS_SECONDS`; then stop the
    faults, and let each client finish the key it is on."""
    chaos = Chaos()
    faults_stop, clients_stop = threading.Event(), threading.Event()
    jobs: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (kill_workers, (rig, chaos, faults_stop)),
        (cut_store, (rig, chaos, faults_stop)),
        (purge, (rig, chaos, faults_stop)),
        *((client, (rig, path, f"{prefix}-c{n}", chaos, clients_stop)) for n in range(CLIENTS)),
    ]
    threads = [
        threading.Thread(target=target, args=args, name=target.__name__, daemon=True)
        for target, args in jobs
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(CHAOS_SECONDS)
    finally:
        faults_stop.set()
        clients_stop.set()
        for thread in threads:
            thread.join(timeout=GIVE_UP_AFTER + CLIENT_TIMEOUT[1] + 60)
        rig.proxy.restore()
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"threads still running: {stuck}"
    return chaos


def settle(chaos: Chaos) -> None:
    """Wait until every view a request started has ended: the longest view
    after the last request sent, and a margin for a busy pool."""
    last = max((r.sent for o in chaos.operations for r in o.replies), default=time.time())
    remaining = last + MAX_DELAY + SETTLE_MARGIN - time.time()
    if remaining > 0:
        time.sleep(remaining)


# -- the verdict ----------------------------------------------------------------------------------


def recorded_runs(prefix: str) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = defaultdict(list)
    rows = Execution.objects.filter(key__startswith=f"{prefix}-").order_by("started_at", "pk")
    for row in rows:
        runs[row.key].append(
            Run(
                row.pk,
                row.key,
                row.pid,
                row.started_at.timestamp(),
                row.finished_at.timestamp() if row.finished_at is not None else None,
                row.answered_at.timestamp() if row.answered_at is not None else None,
            )
        )
    return runs


def kill_of(run: Run, kills: list[Kill]) -> Kill | None:
    """The kill of the run's worker after the run started and before its
    answer was stored: the first kill of its pid after its start, for a run
    that never got that far."""
    for kill in kills:
        if kill.pid == run.pid and run.started <= kill.at:
            return kill if run.answered is None or kill.at <= run.answered else None
    return None


def expired(run: Run, following: Run) -> bool:
    """Whether the key's record had expired when ``following`` began: the
    record ``run`` claimed expires ``CHAOS_TTL`` after its claim, which came
    just before the run. A request the pool held that long (a client gives
    up well before) then runs as a new request, as documented."""
    return following.started - run.started >= CHAOS_TTL


def causes_of(run: Run, following: Run, chaos: Chaos) -> set[str]:
    """Why a run that another run of its key followed did not end the key:
    its record expired meanwhile, its worker was killed, the store was cut
    off while it ran (from its claim to its completion), or it outlived its
    lease."""
    if expired(run, following):
        return {"expired"}
    causes = set()
    kill = kill_of(run, chaos.kills)
    if kill is not None:
        causes.add("worker killed")
    end = run.end
    if end is None:
        end = kill.at if kill is not None else run.started + MAX_DELAY
    if any(
        cut.start <= end + CUT_GRACE and cut.end >= run.started - CUT_GRACE for cut in chaos.cuts
    ):
        causes.add("store cut")
    if run.end is not None and run.end - run.started > CHAOS_LOCK_TIMEOUT:
        causes.add("lease")
    return causes or {"unexplained"}


CAUSES = ("worker killed", "store cut", "lease", "expired", "unexplained")


@dataclass
class Verdict:
    """What one configuration's run came to."""

    runs: dict[str, list[Run]]
    #: The keys whose view ran more than once, and why their earlier runs did not end them.
    doubles: dict[str, set[str]]
    #: Of those, the keys with more extra runs than runs whose worker was
    #: killed (and runs whose record expired before the next one).
    not_by_kills: list[str]
    #: Runs that began long after the last request of their key was sent: the
    #: pool held the request (seconds late, by run id).
    late: dict[int, float]
    #: (key, status) of the answers 5xx other than 503, and of the final ones not 2xx.
    server_errors: list[tuple[str, int]]
    final_4xx: list[tuple[str, int]]
    #: Keys whose 2xx answers name different runs, or a run not recorded for the key.
    mixed_up: dict[str, list[int | None]]
    unrecorded: dict[str, list[int | None]]
    gave_up: list[str]


def judge(chaos: Chaos, runs: dict[str, list[Run]]) -> Verdict:
    doubles = {
        key: set().union(*(causes_of(a, b, chaos) for a, b in pairwise(key_runs)))
        for key, key_runs in runs.items()
        if len(key_runs) > 1
    }
    not_by_kills = [
        key
        for key, key_runs in runs.items()
        if len(key_runs) - 1
        > sum(kill_of(run, chaos.kills) is not None for run in key_runs)
        + sum(expired(a, b) for a, b in pairwise(key_runs))
    ]
    sent: dict[str, list[float]] = {
        o.key: sorted(r.sent for r in o.replies) for o in chaos.operations
    }
    late = {}
    for key, key_runs in runs.items():
        for run in key_runs:
            before = [t for t in sent.get(key, []) if t <= run.started]
            if before and run.started - before[-1] > LATE_START:
                late[run.pk] = run.started - before[-1]
    server_errors: list[tuple[str, int]] = []
    final_4xx: list[tuple[str, int]] = []
    gave_up: list[str] = []
    mixed_up: dict[str, list[int | None]] = {}
    unrecorded: dict[str, list[int | None]] = {}
    for operation in chaos.operations:
        for reply in operation.replies:
            if reply.status is None:
                continue
            if reply.status >= 500 and reply.status != 503:
                server_errors.append((operation.key, reply.status))
            if reply.final and not 200 <= reply.status < 300:
                final_4xx.append((operation.key, reply.status))
        answered = [r.execution for r in operation.replies if 200 <= (r.status or 0) < 300]
        if len(set(answered)) > 1:
            mixed_up[operation.key] = answered
        recorded = {run.pk for run in runs.get(operation.key, [])}
        if any(execution not in recorded for execution in answered):
            unrecorded[operation.key] = answered
        if not operation.done:
            gave_up.append(operation.key)
    return Verdict(
        runs, doubles, not_by_kills, late, server_errors, final_4xx, mixed_up, unrecorded, gave_up
    )


def report(store: str, mode: str, chaos: Chaos, verdict: Verdict, took: float, log: str) -> str:
    """Print the configuration's row of the table, and the numbers behind it;
    return the row."""
    counts = Counter(cause for causes in verdict.doubles.values() for cause in causes)
    causes = ", ".join(f"{cause} {counts[cause]}" for cause in CAUSES if counts[cause]) or "-"
    row = f"| {store} | {mode} | {len(chaos.operations)} | {len(verdict.doubles)} | {causes} |"
    replies = [reply for operation in chaos.operations for reply in operation.replies]
    statuses = Counter("none" if r.status is None else str(r.status) for r in replies)
    failed_purges = [p for p in chaos.purges if p.returncode != 0]
    outside_cuts = [
        p
        for p in failed_purges
        if not any(c.start <= p.end and c.end >= p.start for c in chaos.cuts)
    ]
    mixed_causes = Counter(
        cause for key in verdict.mixed_up for cause in verdict.doubles.get(key, {"unexplained"})
    )
    print(f"\n{TABLE_HEADER}\n{row}")
    print(
        f"  {connection.vendor}, {CHAOS_SECONDS:g} s of chaos, {took:.0f} s in all; "
        f"{len(chaos.kills)} workers killed, {len(chaos.cuts)} store cuts "
        f"({sum(c.end - c.start for c in chaos.cuts):.1f} s), {len(chaos.purges)} purges "
        f"({sum(p.deleted for p in chaos.purges)} records deleted, {len(failed_purges)} failed, "
        f"{len(outside_cuts)} of them outside a cut{_first_error(outside_cuts)})\n"
        f"  {len(replies)} requests: {dict(sorted(statuses.items()))} (none: no answer in "
        f"time); {sum(r.dropped for r in replies)} answers dropped; "
        f"{sum(r.replayed for r in replies)} replays; "
        f"{sum(len(key_runs) for key_runs in verdict.runs.values())} runs recorded\n"
        f"  gave up: {len(verdict.gave_up)}; keys answered with different runs: "
        f"{len(verdict.mixed_up)} ({_counted(mixed_causes)}); answers naming no recorded "
        f"run of their key: {len(verdict.unrecorded)}; 5xx other than 503: "
        f"{len(verdict.server_errors)}; final 4xx: {len(verdict.final_4xx)}; runs begun more "
        f"than {LATE_START:g} s after their key's last request: {len(verdict.late)}"
        + (f" (up to {max(verdict.late.values()):.1f} s)" if verdict.late else "")
    )
    print(f"  pool log: {_counted(logged(log))}")
    return row


def logged(log: str) -> Counter[str]:
    """What the pool logged: the exception that ended each traceback, and
    the package's warnings and errors, by message (without the key)."""
    found: Counter[str] = Counter()
    lines = log.splitlines()
    in_traceback = False
    for number, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            in_traceback = False
            after = next((rest for rest in lines[number + 1 :] if rest.strip()), "")
            if not after.startswith(("During handling", "The above exception")):
                found[line[:160]] += 1
        elif message := PACKAGE_MESSAGE.match(line):
            found[message.group(1)] += 1
    return found


def _counted(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common()) or "-"


def _first_error(purges: list[Purge]) -> str:
    return f": {purges[0].error}" if purges else ""


def timeline(key: str, chaos: Chaos, verdict: Verdict) -> str:
    """What happened to ``key``, in seconds since the chaos began: the
    requests and their answers, the runs, their workers' deaths, the cuts."""
    t0 = chaos.started
    operation = next(o for o in chaos.operations if o.key == key)
    requests = " ".join(
        f"+{r.sent - t0:.1f}:{r.status or 'none'}"
        + (f"#{r.execution}" if r.execution is not None else "")
        + ("(dropped)" if r.dropped else "")
        for r in operation.replies
    )
    runs = []
    for run in verdict.runs.get(key, []):
        kill = kill_of(run, chaos.kills)
        end = f"+{run.end - t0:.2f}" if run.end is not None else "?"
        died = f" killed +{kill.at - t0:.2f}" if kill is not None else ""
        runs.append(f"#{run.pk} pid {run.pid} +{run.started - t0:.2f}..{end}{died}")
    first = min((r.started for r in verdict.runs.get(key, [])), default=t0)
    cuts = " ".join(
        f"+{c.start - t0:.1f}..+{c.end - t0:.1f}"
        for c in chaos.cuts
        if first - CUT_GRACE <= c.end and c.start <= first + GIVE_UP_AFTER + MAX_DELAY
    )
    return (
        f"{key} (view {operation.delay:g} s): requests {requests}; runs {'; '.join(runs)}; "
        f"cuts {cuts or '-'}"
    )


@pytest.mark.parametrize(
    ("rig", "mode"),
    [("database", "default"), ("database", "atomic"), ("redis", "default")],
    indirect=["rig"],
    ids=["database-default", "database-atomic", "redis-default"],
)
def test_chaos(rig: Rig, mode: str) -> None:
    rig.proxy.restore()
    prefix = f"chaos-{rig.store}-{mode}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    log_start = len(rig.server.log())

    chaos = unleash(rig, PATHS[mode], prefix)
    settle(chaos)
    verdict = judge(chaos, recorded_runs(prefix))
    took = time.monotonic() - started
    row = report(rig.store, mode, chaos, verdict, took, rig.server.log()[log_start:])
    TABLE.append(row)

    # (key, what went wrong with it)
    problems: list[tuple[str, str]] = []
    if mode == "atomic":
        # The run and the completion commit together: no key has two committed
        # runs, unless its record expired in between.
        problems += [
            (key, f"{len(verdict.runs[key])} committed runs: {', '.join(sorted(causes))}")
            for key, causes in verdict.doubles.items()
            if causes - {"expired"}
        ]
    else:
        # A view runs again only after a worker died running it (or its
        # record expired).
        problems += [
            (key, f"ran {len(verdict.runs[key])} times: {', '.join(sorted(verdict.doubles[key]))}")
            for key in verdict.not_by_kills
        ]
    problems += [(key, f"answered {status}") for key, status in verdict.server_errors]
    problems += [(key, f"finally answered {status}") for key, status in verdict.final_4xx]
    problems += [(key, f"answered with runs {ids}") for key, ids in verdict.mixed_up.items()]
    problems += [
        (key, f"answered with runs {ids}, not all recorded for it")
        for key, ids in verdict.unrecorded.items()
        if key not in verdict.mixed_up
    ]
    if problems:
        examples = list(dict.fromkeys(key for key, _ in problems))[:3]
        pytest.fail(
            f"{row}\n{len(problems)} problems:\n  "
            + "\n  ".join(f"{key} {what}" for key, what in problems[:20])
            + ("\n  ..." if len(problems) > 20 else "")
            + "\nFor example (seconds since the chaos began):\n  "
            + "\n  ".join(timeline(key, chaos, verdict) for key in examples),
            pytrace=False,
        )
