"""What clients that retry on their own do with each answer, measured.

    python benchmarks/clients.py                     # every part, PostgreSQL
    python benchmarks/clients.py --parts storm --operations 750

Needs the test extras, the machine's PostgreSQL and Redis, and, for the
generated client's column, ``openapi-python-client`` (its command on PATH,
or ``--generator``) with ``httpx``, ``attrs`` and ``python-dateutil``
importable here. Not part of the test suite: it prints what it saw.

A gunicorn pool serves the demo's charges (``demo.payments``) at
``/bench/clients/<store>/<answers>/<case>/v1/charges`` (``demo.bench``);
every request goes through ``tests/lossy_proxy.py``, which counts the
requests of each key and, in the storm, loses and delays responses. The
clients:

``stripe``
    Stripe's Python SDK, ``max_network_retries=3``;
``urllib3``
    ``requests`` with ``Retry(total=3, status_forcelist=[409, 502, 503],
    allowed_methods=None, backoff_factor=0.5)``: ``Retry-After`` obeyed;
``urllib3+hint``
    the same, with the how-to's ``Retry`` that retries a 409 only when it
    carries ``Retry-After`` (the package's transient answers);
``generated``
    the client ``openapi-python-client`` generates from the OpenAPI
    document of a protected operation (``django_idempotency.openapi``): one
    attempt, no retry.

Parts:

``answers``
    each answer of the package, with the package's answers (problem+json)
    and with Stripe's: the attempts each client makes, how long until its
    caller has a result, and what the caller sees;
``windows``
    a duplicate sent 0.2 s after a slow first request, with ``on_conflict``
    409 and ``"wait"``: whether each client ends with the charge;
``storm``
    operations from 32 threads through lost and delayed responses, on the
    database store and on Redis: rows, duplicates, mismatched objects, and
    the errors callers saw, by cause.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "testproject"), str(ROOT / "tests")]

import servers  # noqa: E402  (tests/servers.py)
from lossy_proxy import LossyProxy  # noqa: E402  (tests/lossy_proxy.py)
from run import BENCH_DB, prepare_database, setup_django  # noqa: E402  (benchmarks/run.py)

PARTS = ("answers", "windows", "storm")
CLIENTS = ("stripe", "urllib3", "generated")
ANSWERS = ("in_use", "unavailable", "rolled_back", "missing", "invalid", "mismatch", "not_stored")
#: The case of demo.bench's charges each answer needs.
CASE_OF = {"missing": "required", "not_stored": "unstored", "rolled_back": "rollback"}
API_KEY = "sk_test_clients"
#: How long the first request of ``in_use`` takes: longer than any client's retries.
BLOCKER_SECONDS = 8.0


def charges_path(store: str, answers: str, case: str) -> str:
    return f"/bench/clients/{store}/{answers}/{case}/v1/charges"


def params(description: str, amount: int = 100, delay: float = 0) -> dict[str, Any]:
    result: dict[str, Any] = {"amount": amount, "currency": "eur", "description": description}
    if delay:
        result["metadata"] = {"delay": str(delay)}
    return result


def form(values: dict[str, Any]) -> dict[str, str]:
    """``values`` form-encoded as Stripe's SDK encodes them."""
    encoded = {name: str(value) for name, value in values.items() if name != "metadata"}
    for name, value in values.get("metadata", {}).items():
        encoded[f"metadata[{name}]"] = value
    return encoded


# -- the clients: each calls one charge and says what its caller saw ------------------------


class Outcome:
    def __init__(self, seen: str, charge: dict[str, Any] | None = None) -> None:
        self.seen = seen
        self.charge = charge


def call_stripe(base: str, key: str | None, values: dict[str, Any], timeout: float) -> Outcome:
    import stripe

    client = stripe.StripeClient(
        API_KEY,
        base_addresses={"api": base},
        max_network_retries=3,
        http_client=stripe.RequestsClient(timeout=timeout),
    )
    options: Any = {"idempotency_key": key} if key else {}
    try:
        charge = client.v1.charges.create(params=values, options=options)
    except stripe.StripeError as error:
        body = error.json_body if isinstance(error.json_body, dict) else {}
        code = body.get("error", {}).get("code") if "error" in body else None
        if "Invalid response object" in str(error):
            code = "unreadable body"
        status = error.http_status or "no response"
        return Outcome(f"{type(error).__name__} {status} {code or ''}".strip())
    return Outcome("charge", charge.to_dict())


def hinted_retry() -> Any:
    """The how-to's ``Retry`` that retries a 409 only with ``Retry-After``."""
    from urllib3.util.retry import Retry

    class HintedRetry(Retry):
        def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
            if status_code == 409 and not has_retry_after:
                return False  # a permanent conflict: retrying cannot change it
            return bool(super().is_retry(method, status_code, has_retry_after))

    return HintedRetry


def urllib3_session(timeout: float, *, hinted: bool = False) -> Any:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = (hinted_retry() if hinted else Retry)(
        total=3,
        status_forcelist=[409, 502, 503],
        allowed_methods=None,
        backoff_factor=0.5,
        respect_retry_after_header=True,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def call_urllib3(
    base: str, key: str | None, values: dict[str, Any], timeout: float, *, hinted: bool = False
) -> Outcome:
    import requests

    headers = {"Authorization": f"Bearer {API_KEY}"}
    if key:
        headers["Idempotency-Key"] = key
    try:
        response = urllib3_session(timeout, hinted=hinted).post(
            f"{base}/v1/charges", data=form(values), headers=headers, timeout=timeout
        )
    except requests.RequestException as error:
        reason = getattr(error.args[0], "reason", None) if error.args else None
        return Outcome(f"{type(error).__name__} ({type(reason).__name__ if reason else ''})")
    return outcome_of(response.status_code, response.content)


def outcome_of(status: int, content: bytes) -> Outcome:
    try:
        document = json.loads(content)
    except ValueError:
        return Outcome(f"{status} (not JSON)")
    if status == 200:
        return Outcome("charge", document)
    code = document.get("code") or document.get("error", {}).get("code")
    return Outcome(f"{status} {code}")


class Generated:
    """The client openapi-python-client makes from the operation's OpenAPI
    document, as ``django_idempotency.openapi`` documents it."""

    def __init__(self, generator: str, answers: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="idempotency-generated-"))
        schema = self.directory / "openapi.json"
        schema.write_text(json.dumps(openapi_document(answers)))
        subprocess.run(
            [
                generator,
                "generate",
                "--path",
                str(schema),
                "--meta",
                "none",
                "--output-path",
                str(self.directory / f"charges_client_{answers}"),
            ],
            check=True,
            capture_output=True,
        )
        package = f"charges_client_{answers}"  # each answer set's client, a package
        sys.path.insert(0, str(self.directory))
        self.package = importlib.import_module(package)
        self.operation = importlib.import_module(f"{package}.api.default.create_charge")
        self.body = importlib.import_module(f"{package}.models.create_charge_body")

    def call(self, base: str, key: str | None, values: dict[str, Any], timeout: float) -> Outcome:
        import httpx

        client = self.package.Client(
            base_url=base,
            timeout=httpx.Timeout(timeout),
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        body = self.body.CreateChargeBody.from_dict(form(values))
        try:
            response = self.operation.sync_detailed(
                client=client, body=body, idempotency_key=key or self.package.types.UNSET
            )
        except httpx.HTTPError as error:
            return Outcome(type(error).__name__)
        parsed = type(response.parsed).__name__ if response.parsed is not None else "None"
        seen = outcome_of(response.status_code, response.content).seen
        return Outcome(f"{seen}, parsed {parsed}", json.loads(response.content or b"null"))

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def openapi_document(answers: str) -> dict[str, Any]:
    """The OpenAPI document of POST /v1/charges, protected as the demo's
    ``conflict`` case is: the key header, the charge, and the package's
    answers in the format of ``answers``, as drf-spectacular or Django Ninja
    would document them."""
    from django_idempotency import errors, openapi
    from django_idempotency.policy import build_policy

    renderer = errors.stripe_response if answers == "stripe" else errors.problem_response
    policy = build_policy({"error_response": renderer})
    _, media_type, error_schema = openapi.FORMATS[renderer]
    charge = {
        "type": "object",
        "properties": {
            name: {"type": "integer" if name in ("amount", "created") else "string"}
            for name in ("id", "object", "amount", "currency", "description", "created")
        },
        "required": ["id", "object", "amount", "currency", "created"],
    }
    responses: dict[str, Any] = {
        "200": {"description": "The charge.", "content": {"application/json": {"schema": charge}}}
    }
    for status, answer in openapi.answers(policy).items():
        answer["content"] = {media_type: {"schema": error_schema(openapi.CODE_SCHEMA)}}
        responses[str(status)] = answer
    body = {
        "type": "object",
        "properties": {
            "amount": {"type": "string"},
            "currency": {"type": "string"},
            "description": {"type": "string"},
        },
        "required": ["amount"],
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "Charges", "version": "1"},
        "paths": {
            "/v1/charges": {
                "post": {
                    "operationId": "create_charge",
                    "parameters": [openapi.key_parameter(policy)],
                    "requestBody": {
                        "required": True,
                        "content": {"application/x-www-form-urlencoded": {"schema": body}},
                    },
                    "responses": responses,
                }
            }
        },
    }


# -- the server and the proxy --------------------------------------------------------------------


@contextmanager
def pool(*, store_down: bool = False) -> Iterator[servers.Server]:
    env = {"IDEMPOTENCY_BENCH": "1", "IDEMPOTENCY_CONN_MAX_AGE": "600"}
    if store_down:  # the database store's alias on a closed port
        env["IDEMPOTENCY_TEST_STORE_DB_PORT"] = "9"
    server = servers.start(BENCH_DB, workers=4, threads=16, extra_env=env)
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


def callers(generated: dict[str, Generated], answers: str) -> dict[str, Callable[..., Outcome]]:
    found: dict[str, Callable[..., Outcome]] = {
        "stripe": call_stripe,
        "urllib3": call_urllib3,
        "urllib3+hint": partial(call_urllib3, hinted=True),
    }
    if answers in generated:
        found["generated"] = generated[answers].call
    return found


def prefix(url: str) -> str:
    """What a client is given as its base: the URL up to ``/v1/charges``."""
    return url.removesuffix("/v1/charges")


def running_first(
    server: servers.Server,
    path: str,
    call: Callable[..., Outcome],
    key: str | None,
    values: dict[str, Any],
    *,
    lead: float,
) -> threading.Thread:
    """A first call of ``call`` with ``key``, straight to the server, started
    ``lead`` seconds ago and still running (its view is slow)."""
    first = threading.Thread(target=call, args=(prefix(server.url(path)), key, values, 80.0))
    first.start()
    time.sleep(lead)
    return first


def measured(
    server: servers.Server,
    path: str,
    call: Callable[..., Outcome],
    key: str | None,
    values: dict[str, Any],
) -> tuple[Outcome, int, float]:
    """``call`` through a proxy without faults: what its caller saw, its
    attempts (the requests with ``key``) and its seconds."""
    with LossyProxy(server.url(""), rate=0) as proxy:
        started = time.monotonic()
        outcome = call(prefix(proxy.url + path), key, values, 80.0)
        return outcome, proxy.requests[key or ""], time.monotonic() - started


# -- part: answers -------------------------------------------------------------------------------


def part_answers(
    server: servers.Server, down: servers.Server, generated: dict[str, Generated]
) -> None:
    print("\n== Each answer, and what each client does with it")
    print(
        "   attempts: requests with the key, the first call's aside; "
        "seconds: until the caller had a result"
    )
    for answers in ("problem", "stripe"):
        print(f"\n-- answers: {answers}")
        print(f"{'answer':<12} {'client':<13} {'attempts':>8} {'seconds':>8}  caller sees")
        for answer in ANSWERS:
            for client, call in callers(generated, answers).items():
                target = down if answer == "unavailable" else server
                measure_answer(target, answers, answer, client, call)


def measure_answer(
    server: servers.Server, answers: str, answer: str, client: str, call: Callable[..., Outcome]
) -> None:
    """One call of ``client`` that gets ``answer``. What gets it (a first
    call with the key) is made by the same client, straight to the server,
    so that it sends the same bytes as the measured call."""
    path = charges_path("database", answers, CASE_OF.get(answer, "conflict"))
    direct = prefix(server.url(path))
    key: str | None = uuid.uuid4().hex
    values = params(f"answers-{uuid.uuid4().hex[:8]}")
    first = None
    if answer == "missing":
        if client == "stripe":
            print(f"{answer:<12} {client:<13} {'-':>8} {'-':>8}  (the SDK sends a key with POSTs)")
            return
        key = None
    elif answer == "invalid":
        key = "k" * 256
    elif answer in ("mismatch", "not_stored"):
        call(direct, key, values, 30.0)
        if answer == "mismatch":
            values = {**values, "amount": 999}
    elif answer == "in_use":
        values = {**values, "metadata": {"delay": str(BLOCKER_SECONDS)}}
        first = running_first(server, path, call, key, values, lead=0.5)
    outcome, attempts, seconds = measured(server, path, call, key, values)
    print(f"{answer:<12} {client:<13} {attempts:>8} {seconds:>8.2f}  {outcome.seen}")
    if first is not None:
        first.join()


# -- part: windows -------------------------------------------------------------------------------


def part_windows(server: servers.Server, durations: list[float]) -> None:
    print("\n== A duplicate 0.2 s after a slow first request: does the client end with the charge?")
    print(
        f"{'view (s)':>8} {'on_conflict':<12} {'client':<8} {'attempts':>8} "
        f"{'seconds':>8}  caller sees"
    )
    for duration in durations:
        for case in ("conflict", "wait"):
            for client, call in (("stripe", call_stripe), ("urllib3", call_urllib3)):
                answers = "stripe" if client == "stripe" else "problem"
                path = charges_path("database", answers, case)
                key = uuid.uuid4().hex
                values = params(f"window-{uuid.uuid4().hex[:8]}", delay=duration)
                first = running_first(server, path, call, key, values, lead=0.2)
                outcome, attempts, seconds = measured(server, path, call, key, values)
                first.join()
                conflict = "409" if case == "conflict" else "wait (10 s)"
                print(
                    f"{duration:>8g} {conflict:<12} {client:<8} {attempts:>8} "
                    f"{seconds:>8.2f}  {outcome.seen}"
                )


# -- part: storm ---------------------------------------------------------------------------------


def part_storm(server: servers.Server, operations: int, stores: list[str], seed: int) -> None:
    from demo.models import Charge

    print(
        f"\n== Storm: {operations} operations per store and client, 32 threads, "
        "through lost and delayed responses"
    )
    runs = [(store, client) for store in stores for client in ("stripe", "urllib3")]
    for run_number, (store, client) in enumerate(runs):
        call = call_stripe if client == "stripe" else call_urllib3
        answers = "stripe" if client == "stripe" else "problem"
        path = charges_path(store, answers, "conflict")
        run = uuid.uuid4().hex[:8]
        keys = [(i, f"storm-{run}-{i}", uuid.uuid4().hex) for i in range(operations)]
        with LossyProxy(
            server.url(""), rate=0.3, per_key=10, max_delay=1.5, seed=seed + run_number
        ) as proxy:
            base = prefix(proxy.url + path)

            def operation(
                item: tuple[int, str, str],
                call: Callable[..., Outcome] = call,
                base: str = base,
            ) -> tuple[str, Outcome]:
                i, description, key = item
                delay = 0.3 if i % 4 == 0 else 0  # slow enough for retries to overlap
                return description, call(base, key, params(description, delay=delay), 1.0)

            started = time.monotonic()
            with ThreadPoolExecutor(32) as threads:
                outcomes = dict(threads.map(operation, keys))
            seconds = time.monotonic() - started
        report_storm(store, client, outcomes, proxy, seconds, Charge)


def report_storm(
    store: str,
    client: str,
    outcomes: dict[str, Outcome],
    proxy: LossyProxy,
    seconds: float,
    charge_model: Any,
) -> None:
    rows = collections.Counter(
        charge_model.objects.filter(description__in=list(outcomes)).values_list(
            "description", flat=True
        )
    )
    stored = {
        c.description: c.as_stripe()
        for c in charge_model.objects.filter(description__in=list(outcomes))
    }
    duplicates = sum(1 for count in rows.values() if count > 1)
    mismatched = sum(
        1
        for description, outcome in outcomes.items()
        if outcome.charge is not None and outcome.charge != stored.get(description)
    )
    errors = collections.Counter(o.seen for o in outcomes.values() if o.charge is None)
    errored = [d for d, o in outcomes.items() if o.charge is None]
    faults = ", ".join(f"{kind} {count}" for kind, count in sorted(proxy.faults.items()))
    print(f"\n-- {store} store, {client}: {len(outcomes)} operations in {seconds:.1f} s")
    print(
        f"   requests {sum(proxy.requests.values())}, "
        f"faults injected {sum(proxy.faults.values())} ({faults})"
    )
    print(
        f"   rows {sum(rows.values())}, operations with a row {len(rows)}, "
        f"duplicates {duplicates}, mismatched objects {mismatched}"
    )
    print(f"   errors seen by callers: {sum(errors.values())}")
    for seen, count in errors.most_common():
        print(f"     {count:>5}  {seen}")
    if errored:
        created = sum(1 for d in errored if rows.get(d) == 1)
        print(
            f"   of those operations, charged once: {created}, "
            f"not charged: {len(errored) - created}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--operations", type=int, default=750, help="per store and client (storm)")
    parser.add_argument("--stores", default="database,redis")
    parser.add_argument("--durations", default="1,2,3,5,8", help="view seconds (windows)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--generator", default=shutil.which("openapi-python-client"))
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")

    setup_django("postgresql")
    prepare_database("postgresql")
    generated: dict[str, Generated] = {}
    if "answers" in parts:
        if args.generator:
            generated = {
                answers: Generated(args.generator, answers) for answers in ("problem", "stripe")
            }
        else:
            print("openapi-python-client not found: no column for the generated client")
    with pool() as server:
        if "answers" in parts:
            with pool(store_down=True) as down:
                part_answers(server, down, generated)
        if "windows" in parts:
            part_windows(server, [float(d) for d in args.durations.split(",")])
        if "storm" in parts:
            part_storm(server, args.operations, args.stores.split(","), args.seed)
    for client in generated.values():
        client.close()


if __name__ == "__main__":
    main()
