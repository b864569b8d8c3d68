"""``manage.py idempotency_demo``: a walk through what ``@idempotent`` does.

It migrates the database, then sends requests to the demo endpoints with
Django's test client (the whole request handling runs in-process, no server
needed) and prints each request, each response and the number of orders in
the database after it, so a reader sees that every view ran exactly once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, connections
from django.test import Client

from demo.models import Order
from demo.views import SHORT_TTL
from django_idempotency.models import IdempotencyKey
from django_idempotency.records import RequestKey
from django_idempotency.signals import key_claimed

#: Response headers worth showing; the others are Django's defaults.
SHOWN_HEADERS = ("Idempotent-Replayed", "Location", "Retry-After", "Content-Type")

#: How long the first request of step 4 stays in its view, in seconds.
SLOW_DELAY = 1.0

#: Waited beyond a ttl before counting a key as expired, in seconds.
EXPIRY_MARGIN = 0.3

#: The longest wait for the first request of step 4 to claim its key.
CLAIM_TIMEOUT = 10.0

HEADER = "Idempotency-Key"

#: What the ``key=`` of the package's log lines is (RequestKey.log_id).
LOG_ID_NOTE = (
    "Log lines show a key's log id (key=...), never the key itself: the first 16 hex "
    "digits of the SHA-256 digest of its scope and key."
)


class Command(BaseCommand):
    help = (
        "Walk through idempotent requests on the demo endpoints: a first request, "
        "a replay, a key reused with another body, a concurrent duplicate, expiry, "
        "purge, and a DRF viewset. Migrates the database first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--skip-slow",
            action="store_true",
            help="Skip the steps that wait (the concurrent duplicate and expiry).",
        )

    def handle(self, *args: Any, skip_slow: bool, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        self.prefix = f"demo-{uuid.uuid4().hex[:8]}-"
        self.client = Client()
        self.requests = 0
        self.orders_before = self.orders = Order.objects.count()
        self.view_runs = 0
        self.runs_lock = threading.Lock()
        self.claimed: dict[str, threading.Event] = {}

        key_claimed.connect(self._on_claim, weak=False)
        try:
            with self._package_log():
                self._intro()
                self.step_first_request()
                self.step_replay()
                self.step_mismatch()
                if skip_slow:
                    self.stdout.write("\n(--skip-slow: steps 4 and 5 skipped.)")
                else:
                    self.step_concurrent_duplicate()
                    self.step_expiry()
                self.step_purge(wait=not skip_slow)
                self.step_rest_framework()
                self.step_middleware()
        finally:
            key_claimed.disconnect(self._on_claim)
        self._summary()

    # -- the steps -------------------------------------------------------------

    def step_first_request(self) -> None:
        self.heading(1, "first request")
        self.explain("A request with a new key runs the view: it creates an order, 201.")
        self.exchange("/orders/", self.key("order"), {"item": "coffee", "quantity": 1})

    def step_replay(self) -> None:
        self.heading(2, "the same request again")
        self.explain(
            "A retry with the same key and body is answered from the store: same status "
            "and body, Idempotent-Replayed: true, and the view does not run."
        )
        self.exchange("/orders/", self.key("order"), {"item": "coffee", "quantity": 1})

    def step_mismatch(self) -> None:
        self.heading(3, "the same key with a different body")
        self.explain(
            "A key reused for another request is refused with 422 problem+json; nothing runs."
        )
        self.exchange("/orders/", self.key("order"), {"item": "tea", "quantity": 2})

    def step_concurrent_duplicate(self) -> None:
        self.heading(4, "a duplicate while the first request is still running")
        self.explain(
            f"Client A's view takes {SLOW_DELAY:g} s; client B sends the same request "
            "meanwhile and gets 409 with Retry-After, then B's retry is replayed."
        )
        path = f"/slow/orders/conflict/?delay={SLOW_DELAY:g}"
        key = self.key("slow")
        body = {"item": "espresso", "quantity": 1}
        claimed = self.claimed[key] = threading.Event()
        answer: dict[str, Any] = {}

        def send_first() -> None:
            try:
                answer["response"] = Client().post(
                    path, body, content_type="application/json", headers={HEADER: key}
                )
            except BaseException as exc:  # reported by the main thread
                answer["error"] = exc
            finally:
                connections.close_all()

        self.stdout.write("  client A, in a thread:")
        self.show_request(path, key, body)
        first = threading.Thread(target=send_first, name="idempotency-demo-client-a")
        self.requests += 1
        first.start()
        if not claimed.wait(CLAIM_TIMEOUT):
            first.join()
            raise CommandError(
                f"Client A did not claim its key: {answer.get('error')!r}"
            ) from answer.get("error")

        self.stdout.write("  client B, while A's view is still running:")
        self.exchange(path, key, body)

        first.join()
        error = answer.get("error")
        if error is not None:
            raise CommandError(f"Client A's request failed: {error!r}") from error
        self.stdout.write("  client A's answer, once its view has finished:")
        self.show_response(answer["response"])
        self.show_orders()

        self.stdout.write("  client B retries after A has finished:")
        self.exchange(path, key, body)

    def step_expiry(self) -> None:
        self.heading(5, "expiry")
        self.explain(
            f"/short-lived/orders/ keeps keys for {SHORT_TTL} s (@idempotent(ttl={SHORT_TTL}, "
            "lock_timeout=1)); once a key expires, the same request runs again."
        )
        key = self.key("short")
        body = {"item": "croissant", "quantity": 3}
        self.exchange("/short-lived/orders/", key, body)
        self.exchange("/short-lived/orders/", key, body)
        self.wait_for_expiry("for the key to expire")
        self.exchange("/short-lived/orders/", key, body)

    def step_purge(self, *, wait: bool) -> None:
        self.heading(6, "purge")
        self.explain(
            "Expired keys stay in the table until purge_idempotency_keys deletes them "
            "(run it from cron); keys still in use are never deleted."
        )
        if wait:
            self.wait_for_expiry("for the key of step 5 to expire again")
        self.stdout.write(f"  idempotency keys stored: {IdempotencyKey.objects.count()}")
        self.purge("--dry-run")
        self.purge()
        self.stdout.write(f"  idempotency keys stored: {IdempotencyKey.objects.count()}")

    def step_rest_framework(self) -> None:
        self.heading(7, "the same with Django REST framework")
        if not settings.HAS_DRF:
            self.explain(
                "Django REST framework is not installed; to see this step: "
                'python -m pip install -e ".[drf]"'
            )
            return
        self.explain(
            "/api/orders/ is a ModelViewSet with IdempotencyMixin: the key is claimed "
            "after DRF's authentication and throttling, and the rendered response is "
            "replayed byte for byte."
        )
        key = self.key("api")
        self.exchange("/api/orders/", key, {"item": "flat white", "quantity": 1})
        self.exchange("/api/orders/", key, {"item": "flat white", "quantity": 1})
        self.exchange("/api/orders/", key, {"item": "flat white", "quantity": 2})

    def step_middleware(self) -> None:
        self.heading(8, "a URL space protected by the middleware")
        self.explain(
            "/shop/orders/ is a plain view, not decorated: IdempotencyMiddleware protects "
            'every URL of the "shop" namespace, named in IDEMPOTENCY["PROTECTED_URLS"].'
        )
        key = self.key("shop")
        self.exchange("/shop/orders/", key, {"item": "muffin", "quantity": 1})
        self.exchange("/shop/orders/", key, {"item": "muffin", "quantity": 1})

    # -- requests and their display --------------------------------------------

    def key(self, name: str) -> str:
        return self.prefix + name

    def exchange(self, path: str, key: str, body: dict[str, Any]) -> None:
        """Send one POST with the test client and show it, its answer and the orders."""
        self.show_request(path, key, body)
        self.requests += 1
        response = self.client.post(
            path, body, content_type="application/json", headers={HEADER: key}
        )
        self.show_response(response)
        self.show_orders()

    def show_request(self, path: str, key: str, body: dict[str, Any]) -> None:
        self.stdout.write(f"  > POST {path}")
        self.stdout.write(f"  > {HEADER}: {key}")
        self.stdout.write(f"  > {json.dumps(body)}")

    def show_response(self, response: Any) -> None:
        self.stdout.write(f"  < {response.status_code} {response.reason_phrase}")
        for name in SHOWN_HEADERS:
            if name in response.headers:
                self.stdout.write(f"  < {name}: {response.headers[name]}")
        self.stdout.write(f"  < {response.content.decode('utf-8', 'replace')}")

    def show_orders(self) -> None:
        count = Order.objects.count()
        self.stdout.write(f"  orders in the database: {count} ({count - self.orders:+d})")
        self.orders = count

    def wait_for_expiry(self, what: str) -> None:
        delay = SHORT_TTL + EXPIRY_MARGIN
        self.stdout.write(f"  ... waiting {delay:g} s {what} ...")
        time.sleep(delay)

    def purge(self, *args: str) -> None:
        self.stdout.write(" ".join(["  $ manage.py purge_idempotency_keys", *args]))
        output = StringIO()
        call_command("purge_idempotency_keys", *args, stdout=output)
        for line in output.getvalue().splitlines():
            self.stdout.write(f"  {line}")

    # -- framing ---------------------------------------------------------------

    def heading(self, number: int, title: str) -> None:
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(f"Step {number}: {title}"))

    def explain(self, text: str) -> None:
        self.stdout.write(text)

    def _intro(self) -> None:
        self.stdout.write(
            self.style.MIGRATE_HEADING("django-idempotency demo")
            + f" (database: {connection.vendor}; keys of this run start with {self.prefix!r})"
        )
        self.stdout.write(
            "Every endpoint creates an order, so the order count shows each time a view runs."
        )
        self.stdout.write(LOG_ID_NOTE)
        self.stdout.write(f"  orders in the database: {self.orders}")

    def _summary(self) -> None:
        created = Order.objects.count() - self.orders_before
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING("Summary"))
        self.stdout.write(
            f"{_count(self.requests, 'request')} sent; the views ran "
            f"{_count(self.view_runs, 'time')} and created {_count(created, 'order')}."
        )

    @contextmanager
    def _package_log(self) -> Iterator[None]:
        """Show the package's log lines in place, unless logging is configured."""
        logger = logging.getLogger("django_idempotency")
        if logger.hasHandlers():
            yield
            return
        handler = _LineHandler(lambda line: self.stdout.write(f"  log: {line}"))
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)

    def _on_claim(self, sender: Any, *, key: RequestKey, **kwargs: Any) -> None:
        # Sent by the request's own thread just before its view runs.
        if not key.key.startswith(self.prefix):
            return
        with self.runs_lock:
            self.view_runs += 1
        event = self.claimed.get(key.key)
        if event is not None:
            event.set()


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


class _LineHandler(logging.Handler):
    """Hands each log record, formatted as one line, to ``write``."""

    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record))
        except Exception:
            self.handleError(record)
