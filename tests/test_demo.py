"""The ``idempotency_demo`` walkthrough shows what a reader should see: each
answer in order, and one order per view run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import import_module
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from helpers import orders, problem, replayed, send

from demo.management.commands.idempotency_demo import LOG_ID_NOTE
from demo.models import Order
from django_idempotency.models import IdempotencyKey

MANAGE_PY = Path(__file__).resolve().parent.parent / "testproject" / "manage.py"
TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.rst"

STATUS_LINE = re.compile(r"^\s*< (\d{3}) ")
HEADER_LINE = re.compile(r"^\s*< ([A-Za-z][A-Za-z-]*): (.*)$")
BODY_LINE = re.compile(r"^\s*< (.*)$")
ORDERS_LINE = re.compile(r"^\s*orders in the database: (\d+) \(([+-]\d+)\)$")
KEY_LINE = re.compile(r"^\s*> Idempotency-Key: (.+)$")
SUMMARY = re.compile(r"\d+ requests? sent; the views ran \d+ times? and created \d+ orders?\.")


@dataclass
class Answer:
    """One response as the demo printed it."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""

    @property
    def replayed(self) -> bool:
        return self.headers.get("Idempotent-Replayed") == "true"


def answers(output: str) -> list[Answer]:
    found: list[Answer] = []
    for line in output.splitlines():
        status = STATUS_LINE.match(line)
        if status:
            found.append(Answer(int(status.group(1))))
            continue
        header = HEADER_LINE.match(line)
        if header and found and not found[-1].body:
            found[-1].headers[header.group(1)] = header.group(2)
            continue
        body = BODY_LINE.match(line)
        if body and found:
            found[-1].body = body.group(1)
    return found


def order_deltas(output: str) -> list[int]:
    return [int(m.group(2)) for line in output.splitlines() if (m := ORDERS_LINE.match(line))]


def keys_sent(output: str) -> list[str]:
    return [m.group(1) for line in output.splitlines() if (m := KEY_LINE.match(line))]


#: What step 7 (Django REST framework) answers, where DRF is installed.
DRF_ANSWERS = [(201, False), (201, True), (422, False)] if django_settings.HAS_DRF else []
DRF_DELTAS = [1, 0, 0] if django_settings.HAS_DRF else []
#: What step 8 (the middleware's shop) answers: created, replayed.
SHOP_ANSWERS = [(201, False), (201, True)]
SHOP_DELTAS = [1, 0]


def tutorial_summaries() -> list[str]:
    """The demo's summary lines that the tutorial quotes, lines rejoined."""
    return SUMMARY.findall(" ".join(TUTORIAL.read_text(encoding="utf-8").split()))


def assert_quoted_by_tutorial(output: str) -> None:
    """The tutorial quotes the summary a run with DRF prints (its command installs DRF)."""
    if django_settings.HAS_DRF:
        assert output.rstrip().splitlines()[-1] in tutorial_summaries()


def run_demo(*args: str) -> str:
    out = StringIO()
    call_command("idempotency_demo", *args, stdout=out, no_color=True)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_walkthrough_shows_every_answer_and_one_order_per_view_run() -> None:
    output = run_demo()

    seen = answers(output)
    assert [(a.status, a.replayed) for a in seen] == [
        (201, False),  # 1. first request: the view runs
        (201, True),  # 2. same request: replayed
        (422, False),  # 3. same key, other body
        (409, False),  # 4. duplicate while the first runs
        (201, False),  # 4. the first request's own answer
        (201, True),  # 4. the duplicate's retry: replayed
        (201, False),  # 5. short-lived key: first request
        (201, True),  # 5. replayed before it expires
        (201, False),  # 5. after expiry: runs again
        *DRF_ANSWERS,  # 7. the DRF viewset: created, replayed, mismatch
        *SHOP_ANSWERS,  # 8. the middleware's shop: created, replayed
    ]
    first, replay, mismatch, in_use, slow, slow_replay, short, short_replay, expired = seen[:9]
    assert replay.body == first.body
    assert replay.headers["Location"] == first.headers["Location"]
    assert slow_replay.body == slow.body
    assert short_replay.body == short.body
    assert expired.body != short.body  # a new order, with a new id
    assert mismatch.headers["Content-Type"] == "application/problem+json"
    assert '"code": "idempotency_key_mismatch"' in mismatch.body
    assert in_use.headers["Content-Type"] == "application/problem+json"
    assert in_use.headers["Retry-After"] == "1"
    assert '"code": "idempotency_key_in_use"' in in_use.body

    # One count after each answer; the 409 comes before the first request's order.
    assert order_deltas(output) == [1, 0, 0, 0, 1, 0, 1, 0, 1, *DRF_DELTAS, *SHOP_DELTAS]
    assert "1 expired key would be deleted (dry run)." in output
    assert "Deleted 1 expired key in 1 batch." in output
    drf = 1 if django_settings.HAS_DRF else 0
    assert output.rstrip().endswith(
        f"{11 + 3 * drf} requests sent; the views ran {5 + drf} times and created {5 + drf} orders."
    )
    assert_quoted_by_tutorial(output)
    assert LOG_ID_NOTE in output.splitlines()

    assert sorted(Order.objects.values_list("item", flat=True)) == sorted(
        ["coffee", "croissant", "croissant", "espresso", "muffin"] + ["flat white"] * drf
    )
    # The purge removed the expired short-lived key; the others remain.
    assert IdempotencyKey.objects.count() == 3 + drf
    shop_created, shop_replay = seen[-2:]
    assert shop_replay.body == shop_created.body
    if drf:
        created, replay_api, mismatch_api = seen[9:12]
        assert replay_api.body == created.body
        assert mismatch_api.headers["Content-Type"] == "application/problem+json"
        assert '"code": "idempotency_key_mismatch"' in mismatch_api.body


@pytest.mark.django_db(transaction=True)
def test_without_rest_framework_step_7_says_how_to_see_it(settings: Any) -> None:
    # The URLconf reads HAS_DRF once, when it is imported: import it first, or
    # every later test in this process would find the DRF routes missing.
    import_module(django_settings.ROOT_URLCONF)
    settings.HAS_DRF = False
    output = run_demo("--skip-slow")
    assert 'python -m pip install -e ".[drf]"' in output
    assert [a.status for a in answers(output)] == [201, 201, 422, 201, 201]


@pytest.mark.django_db(transaction=True)
def test_each_run_uses_its_own_keys() -> None:
    first_run = run_demo("--skip-slow")
    second_run = run_demo("--skip-slow")

    drf = 1 if django_settings.HAS_DRF else 0
    for output in (first_run, second_run):
        assert [(a.status, a.replayed) for a in answers(output)] == [
            (201, False),
            (201, True),
            (422, False),
            *DRF_ANSWERS,
            *SHOP_ANSWERS,
        ]
        assert order_deltas(output) == [1, 0, 0, *DRF_DELTAS, *SHOP_DELTAS]
        runs = f"{2 + drf} times and created {2 + drf} orders"
        assert output.rstrip().endswith(f"{5 + 3 * drf} requests sent; the views ran {runs}.")
    assert_quoted_by_tutorial(first_run)
    assert set(keys_sent(first_run)).isdisjoint(keys_sent(second_run))
    assert Order.objects.count() == 2 * (2 + drf)


def test_tutorial_quotes_one_summary_with_and_one_without_skip_slow() -> None:
    # The two runs above check that each summary the tutorial quotes is the real
    # one; a third, stale summary would go unnoticed by them.
    assert len(tutorial_summaries()) == 2


def test_runs_on_a_fresh_sqlite_database(tmp_path: Path) -> None:
    # What a newcomer runs after `pip install -e .`: no database yet, no server.
    database = tmp_path / "fresh.sqlite3"
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"IDEMPOTENCY_TEST_DB_NAME", "IDEMPOTENCY_DB_NAME_OVERRIDE"}
    }
    env.update(IDEMPOTENCY_TEST_DATABASE="sqlite", IDEMPOTENCY_SQLITE_NAME=str(database))
    env.pop("DJANGO_SETTINGS_MODULE", None)

    result = subprocess.run(
        [sys.executable, "-W", "error", str(MANAGE_PY), "idempotency_demo", "--skip-slow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    statuses = [201, 201, 422, *(status for status, _ in DRF_ANSWERS + SHOP_ANSWERS)]
    assert [a.status for a in answers(result.stdout)] == statuses
    assert order_deltas(result.stdout) == [1, 0, 0, *DRF_DELTAS, *SHOP_DELTAS]
    assert database.exists()


# -- the Django REST framework endpoints (demo/api.py) ---------------------------------------


@pytest.fixture
def api(client: Any) -> Any:
    """The test client, for tests of the DRF endpoints (skipped without DRF)."""
    pytest.importorskip("rest_framework")
    return client


@pytest.mark.django_db
def test_api_root_lists_the_viewset(api: Any) -> None:
    response = api.get("/api/", headers={"Accept": "application/json"})
    assert response.json() == {"orders": "http://testserver/api/orders/"}


@pytest.mark.django_db
def test_api_create_is_replayed_and_a_key_is_optional(api: Any) -> None:
    latte = {"item": "latte", "quantity": 2}
    created = send(api, "/api/orders/", latte, key="create-1")
    assert created.status_code == 201
    assert created.json() == {"id": Order.objects.get().pk, **latte}

    retry = send(api, "/api/orders/", latte, key="create-1")
    assert replayed(retry)
    assert (retry.status_code, retry.content) == (201, created.content)
    mocha = {"item": "mocha", "quantity": 1}
    problem(send(api, "/api/orders/", mocha, key="create-1"), 422, "idempotency_key_mismatch")
    assert orders() == 1

    # Without a key, the viewset is not protected: each request creates an order.
    for _ in range(2):
        assert not replayed(send(api, "/api/orders/", {"item": "latte"}, key=None))
    assert orders() == 3


@pytest.mark.django_db
def test_api_invalid_order_is_refused_once_and_its_key_spent(api: Any) -> None:
    refused = send(api, "/api/orders/", {"item": "latte", "quantity": 0}, key="invalid-1")
    assert refused.status_code == 400
    assert refused.json() == {"quantity": ["Order at least one."]}

    # The 400 is the key's stored answer: the retry gets it, and a corrected
    # body needs a new key.
    retry = send(api, "/api/orders/", {"item": "latte", "quantity": 0}, key="invalid-1")
    assert replayed(retry)
    assert (retry.status_code, retry.content) == (400, refused.content)
    corrected = {"item": "latte", "quantity": 1}
    problem(send(api, "/api/orders/", corrected, key="invalid-1"), 422, "idempotency_key_mismatch")
    assert orders() == 0
    assert send(api, "/api/orders/", corrected, key="invalid-2").status_code == 201


@pytest.mark.django_db
def test_api_update_and_delete_are_protected(api: Any) -> None:
    order = Order.objects.create(item="latte", quantity=1)
    detail = f"/api/orders/{order.pk}/"

    # A late retry of an update replays its answer instead of undoing a later one.
    first = send(api, detail, {"quantity": 5}, key="patch-1", method="patch")
    assert first.json()["quantity"] == 5
    assert send(api, detail, {"quantity": 7}, key="patch-2", method="patch").status_code == 200
    late_retry = send(api, detail, {"quantity": 5}, key="patch-1", method="patch")
    assert replayed(late_retry)
    assert late_retry.content == first.content
    order.refresh_from_db()
    assert order.quantity == 7

    replaced = send(api, detail, {"item": "tea", "quantity": 2}, key="put-1", method="put")
    assert replaced.status_code == 200
    assert replayed(send(api, detail, {"item": "tea", "quantity": 2}, key="put-1", method="put"))

    # A retried delete gets its 204 again, not a 404 for the order it deleted.
    deleted = send(api, detail, b"", key="delete-1", method="delete")
    assert deleted.status_code == 204
    retry = send(api, detail, b"", key="delete-1", method="delete")
    assert (retry.status_code, replayed(retry)) == (204, True)
    assert send(api, detail, b"", key="delete-2", method="delete").status_code == 404
    assert orders() == 0


@pytest.mark.django_db
def test_api_repeat_action_requires_a_key(api: Any) -> None:
    order = Order.objects.create(item="cortado", quantity=3)
    repeat = f"/api/orders/{order.pk}/repeat/"

    problem(send(api, repeat, {}, key=None), 400, "idempotency_key_missing")
    assert orders() == 1

    copy = send(api, repeat, {}, key="repeat-1")
    assert copy.status_code == 201
    assert copy.json()["id"] != order.pk
    assert {k: v for k, v in copy.json().items() if k != "id"} == {"item": "cortado", "quantity": 3}
    retry = send(api, repeat, {}, key="repeat-1")
    assert replayed(retry)
    assert retry.content == copy.content
    assert orders() == 2


@pytest.mark.django_db
def test_api_function_view(api: Any) -> None:
    url = "/api/function/orders/"
    created = send(api, url, {"item": "ristretto", "quantity": 1}, key="function-1")
    assert created.status_code == 201
    assert created.json()["item"] == "ristretto"

    retry = send(api, url, {"item": "ristretto", "quantity": 1}, key="function-1")
    assert replayed(retry)
    assert retry.content == created.content
    problem(send(api, url, {"item": "doppio"}, key="function-1"), 422, "idempotency_key_mismatch")
    refused = send(api, url, {"item": "ristretto", "quantity": 0}, key="function-2")
    assert refused.json() == {"quantity": ["Order at least one."]}
    assert replayed(send(api, url, {"item": "ristretto", "quantity": 0}, key="function-2"))
    assert orders() == 1
