"""Clients that retry on their own, for real: Stripe's Python SDK and
``requests`` with urllib3's ``Retry``, against a live server behind a proxy
that loses and delays responses (``lossy_proxy``).

The invariant is the package's: one charge per logical operation, whatever
the client retried, and the client's result is the stored charge. Around it,
what the clients do with the package's answers: the SDK raises its own
``IdempotencyError`` for a reused key under Stripe's answers, retries the
in-flight answer until it gets the charge, and stops at once at a permanent
answer that ``Stripe-Should-Retry: false`` marks.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import stripe
from django.views.decorators.csrf import csrf_exempt
from lossy_proxy import LossyProxy
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from demo.models import Charge
from demo.payments import api_key_scope, create_charge
from django_idempotency.decorators import idempotent
from django_idempotency.errors import stripe_response

pytestmark = pytest.mark.django_db(transaction=True)

#: Operations per storm, and the threads that send them.
OPERATIONS = 40
THREADS = 8


@pytest.fixture
def proxied(live_server: Any) -> Iterator[Callable[..., LossyProxy]]:
    """``proxied(**faults)``: a :class:`LossyProxy` in front of the live server."""
    proxies: list[LossyProxy] = []

    def start(**faults: Any) -> LossyProxy:
        proxies.append(LossyProxy(live_server.url, **faults))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


def charges_endpoint(serve: Callable[..., str], **options: Any) -> str:
    """``create_charge`` of the demo, protected with ``options``, at
    ``/payments/v1/charges`` (the path Stripe's SDK calls)."""
    view = csrf_exempt(idempotent(create_charge, scope_func=api_key_scope, **options))
    return serve(view, "payments/v1/charges")


def stripe_client(proxy: LossyProxy, *, timeout: float = 80, retries: int = 3) -> Any:
    return stripe.StripeClient(
        "sk_test_idempotency",
        base_addresses={"api": f"{proxy.url}/payments"},
        max_network_retries=retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def urllib3_session(*, total: int = 8) -> requests.Session:
    """``requests`` with urllib3's ``Retry`` as such clients configure it:
    conflicts and unavailability retried, ``Retry-After`` obeyed, and POST
    retried after a lost response (the key makes that safe)."""
    retry = Retry(
        total=total,
        status_forcelist=[409, 502, 503],
        allowed_methods=None,
        backoff_factor=0.1,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def assert_one_charge_each(results: dict[str, dict[str, Any]]) -> None:
    """Each operation (by description) made exactly one charge, and its
    client got that charge as stored."""
    for description, seen in results.items():
        stored = Charge.objects.filter(description=description)
        assert stored.count() == 1, f"{description}: {stored.count()} charges"
        assert seen == stored.get().as_stripe()
    assert Charge.objects.count() == len(results)


def storm(operation: Callable[[int], tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Run ``operation(i)`` for each of OPERATIONS from THREADS threads."""
    with ThreadPoolExecutor(THREADS) as pool:
        return dict(pool.map(operation, range(OPERATIONS)))


# -- storms through lost and delayed responses -------------------------------------------------


def test_stripe_sdk_through_lost_and_delayed_responses_charges_once(
    live_server: Any, uses: Any, proxied: Callable[..., LossyProxy], settings: Any
) -> None:
    # The demo's own endpoint: Stripe's answers, in-flight requests waited for.
    settings.ROOT_URLCONF = "testproject.urls"
    proxy = proxied(rate=0.5, per_key=2, max_delay=1.6)
    client = stripe_client(proxy, timeout=1.0)

    def charge(i: int) -> tuple[str, dict[str, Any]]:
        description = f"stripe-{i}"
        params = {"amount": 100 + i, "currency": "eur", "description": description}
        if i % 4 == 0:  # slow enough that a retry finds it in flight
            params["metadata"] = {"delay": "0.3"}
        created = client.v1.charges.create(params=params)
        return description, created.to_dict()

    results = storm(charge)

    assert_one_charge_each(results)
    assert len(proxy.requests) == OPERATIONS  # one key per operation, made by the SDK
    assert sum(proxy.requests.values()) > OPERATIONS  # and retries sent with it
    assert set(proxy.faults) == {"lose", "delay", "hold"}  # each fault happened


def test_urllib3_retry_through_lost_and_delayed_responses_charges_once(
    live_server: Any, uses: Any, proxied: Callable[..., LossyProxy], serve: Callable[..., str]
) -> None:
    # No waiting: in-flight duplicates get the 409, which urllib3 retries
    # after its Retry-After.
    path = charges_endpoint(serve)
    proxy = proxied(rate=0.5, per_key=2, max_delay=1.6)
    session = urllib3_session()

    def charge(i: int) -> tuple[str, dict[str, Any]]:
        description = f"urllib3-{i}"
        data = {"amount": str(100 + i), "currency": "eur", "description": description}
        if i % 4 == 0:
            data["metadata[delay]"] = "0.3"
        response = session.post(
            proxy.url + path,
            data=data,
            headers={"Idempotency-Key": str(uuid.uuid4()), "Authorization": "Bearer sk_1"},
            timeout=1.0,
        )
        assert response.status_code == 200, response.content
        return description, response.json()

    results = storm(charge)

    assert_one_charge_each(results)
    assert sum(proxy.requests.values()) > OPERATIONS
    assert set(proxy.faults) == {"lose", "delay", "hold"}  # each fault happened


# -- what the SDK does with each kind of answer ----------------------------------------------------


def test_stripe_sdk_retries_the_in_flight_answer_until_it_gets_the_charge(
    live_server: Any, uses: Any, proxied: Callable[..., LossyProxy], serve: Callable[..., str]
) -> None:
    charges_endpoint(serve, error_response=stripe_response)
    proxy = proxied(rate=0)
    # The first attempt times out while the charge takes 1 s; the retries
    # find it in flight (409, Stripe-Should-Retry: true), then replay it.
    client = stripe_client(proxy, timeout=0.3)
    params = {"amount": 500, "currency": "eur", "description": "slow", "metadata": {"delay": "1"}}

    created = client.v1.charges.create(params=params)

    assert_one_charge_each({"slow": created.to_dict()})
    (attempts,) = proxy.requests.values()
    assert attempts >= 3


@pytest.fixture(params=["stripe", "problem"])
def answers(request: pytest.FixtureRequest) -> str:
    """The answer set under test: Stripe's, or the default problem+json."""
    return str(request.param)


@pytest.fixture
def sdk(
    live_server: Any,
    uses: Any,
    proxied: Callable[..., LossyProxy],
    serve: Callable[..., str],
    answers: str,
) -> Callable[..., tuple[Any, LossyProxy]]:
    """``sdk(**options)``: a Stripe client and the faultless proxy it goes
    through, to the charges protected with ``options`` and ``answers``."""

    def connect(**options: Any) -> tuple[Any, LossyProxy]:
        renderer = stripe_response if answers == "stripe" else None
        charges_endpoint(serve, error_response=renderer, **options)
        proxy = proxied(rate=0)
        return stripe_client(proxy), proxy

    return connect


def test_stripe_sdk_raises_its_idempotency_error_for_a_reused_key_under_stripes_answers(
    sdk: Callable[..., tuple[Any, LossyProxy]], answers: str
) -> None:
    client, _ = sdk()
    options: Any = {"idempotency_key": "order-42"}
    first = client.v1.charges.create(
        params={"amount": 100, "currency": "eur", "description": "first"}, options=options
    )

    with pytest.raises(stripe.StripeError) as raised:
        client.v1.charges.create(
            params={"amount": 999, "currency": "eur", "description": "first"}, options=options
        )

    assert_one_charge_each({"first": first.to_dict()})
    if answers == "stripe":
        assert type(raised.value) is stripe.IdempotencyError
        assert raised.value.http_status == 400
        assert raised.value.json_body["error"]["code"] == "idempotency_key_mismatch"
    else:  # problem+json: the SDK cannot read it
        assert type(raised.value) is stripe.APIError
        assert "Invalid response object" in str(raised.value)


def test_stripe_sdk_stops_at_a_permanent_answer_under_stripes_answers(
    sdk: Callable[..., tuple[Any, LossyProxy]], answers: str
) -> None:
    # The charge is answered, but too large to store: its duplicates get
    # idempotency_response_not_stored, a 409 that can never change.
    client, proxy = sdk(max_body_size=10)
    options: Any = {"idempotency_key": "order-43"}
    params = {"amount": 100, "currency": "eur", "description": "unstored"}
    client.v1.charges.create(params=params, options=options)

    with pytest.raises(stripe.APIError) as raised:
        client.v1.charges.create(params=params, options=options)

    assert raised.value.http_status == 409
    assert Charge.objects.count() == 1
    # The first call, then the duplicate: once under Stripe's answers
    # (Stripe-Should-Retry: false), and retried three times in vain otherwise.
    assert proxy.requests["order-43"] == (2 if answers == "stripe" else 5)


class HintedRetry(Retry):
    """The how-to's ``Retry`` (docs/howto/retrying-clients.rst): a 409 is
    retried only when it carries ``Retry-After``."""

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if status_code == 409 and not has_retry_after:
            return False  # a permanent conflict: retrying cannot change it
        return bool(super().is_retry(method, status_code, has_retry_after))


def test_a_retry_that_reads_the_hint_stops_at_permanent_conflicts_only(
    live_server: Any, uses: Any, proxied: Callable[..., LossyProxy], serve: Callable[..., str]
) -> None:
    path = charges_endpoint(serve, max_body_size=300)
    proxy = proxied(rate=0)
    session = requests.Session()
    retry = HintedRetry(
        total=5, status_forcelist=[409, 502, 503], allowed_methods=None, raise_on_status=False
    )
    session.mount("http://", HTTPAdapter(max_retries=retry))

    def charge(key: str, description: str, timeout: float = 30, delay: str = "0") -> Any:
        data = {"amount": "100", "description": description, "metadata[delay]": delay}
        headers = {"Idempotency-Key": key, "Authorization": "Bearer sk_1"}
        return session.post(proxy.url + path, data=data, headers=headers, timeout=timeout)

    # In flight: a 409 with Retry-After, retried until the charge is stored.
    first = threading.Thread(target=charge, args=("slow", "slow"), kwargs={"delay": "1.5"})
    first.start()
    time.sleep(0.3)
    slow = charge("slow", "slow", delay="1.5")
    first.join()
    assert slow.status_code == 200
    assert slow.json() == Charge.objects.get(description="slow").as_stripe()
    assert proxy.requests["slow"] >= 3  # the first, then 409s, then the replay

    # Not stored (its answer is over max_body_size): a 409 without
    # Retry-After, sent once.
    long_description = "x" * 200
    assert charge("big", long_description).status_code == 200
    refused = charge("big", long_description)
    assert refused.status_code == 409
    assert refused.json()["code"] == "idempotency_response_not_stored"
    assert proxy.requests["big"] == 2
