"""factory-boy factories for users and stored idempotency keys.

Rows written by the database store get their times from the database clock.
These factories set explicit aware datetimes relative to ``timezone.now()``
instead, far enough from now (an hour by default) that the database clock and
the test's clock can never disagree about which side of "now" they are on.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.utils import timezone

from django_idempotency.models import IdempotencyKey, State
from django_idempotency.storage import RequestKey

#: How far from now the times of factory rows are: well clear of any clock skew.
MARGIN = timedelta(hours=1)


def _digest(row: Any) -> str:
    return RequestKey(scope=row.scope, key=row.key, fingerprint=row.fingerprint).digest


@functools.cache
def _password_hash() -> str:
    # Hashed once for every user: a hash takes the better part of a second.
    return make_password("correct horse battery staple")


def _ago(delta: timedelta) -> datetime:
    return timezone.now() - delta


def _ahead(delta: timedelta) -> datetime:
    return timezone.now() + delta


class UserFactory(factory.django.DjangoModelFactory):  # type: ignore[misc]
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.LazyFunction(_password_hash)

    class Params:
        superuser = factory.Trait(is_staff=True, is_superuser=True)


class IdempotencyKeyFactory(factory.django.DjangoModelFactory):  # type: ignore[misc]
    """A completed, live key by default. Traits give the other states:

    ``in_progress``      a claim whose lease is still running;
    ``abandoned``        a claim whose lease passed (its worker died);
    ``expired``          ``expires_at`` passed (combine with the traits above).
    """

    class Meta:
        model = IdempotencyKey

    scope = "user:1|orders/"
    key = factory.Sequence(lambda n: f"key-{n:08d}")
    fingerprint = factory.Sequence(lambda n: f"{n:064x}")
    digest = factory.LazyAttribute(_digest)
    state = State.COMPLETED
    owner = factory.Sequence(lambda n: f"{n:032x}")
    locked_until = None
    response_status = 201
    response_headers = factory.LazyFunction(lambda: [["Content-Type", "application/json"]])
    response_body = b'{"id": 1}'
    replayable = True
    created_at = factory.LazyFunction(lambda: _ago(timedelta(minutes=5)))
    expires_at = factory.LazyFunction(lambda: _ahead(MARGIN))

    class Params:
        in_progress = factory.Trait(
            state=State.IN_PROGRESS,
            locked_until=factory.LazyFunction(lambda: _ahead(MARGIN)),
            response_status=None,
            response_headers=None,
            response_body=None,
        )
        abandoned = factory.Trait(
            state=State.IN_PROGRESS,
            locked_until=factory.LazyFunction(lambda: _ago(MARGIN)),
            response_status=None,
            response_headers=None,
            response_body=None,
        )
        expired = factory.Trait(
            created_at=factory.LazyFunction(lambda: _ago(3 * MARGIN)),
            expires_at=factory.LazyFunction(lambda: _ago(MARGIN)),
        )


def create_expired_keys(count: int, *, batch_size: int = 1000) -> None:
    """Insert ``count`` expired completed keys with bulk inserts (fast for thousands)."""
    rows = IdempotencyKeyFactory.build_batch(count, expired=True)
    IdempotencyKey.objects.bulk_create(rows, batch_size=batch_size)
