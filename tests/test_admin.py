"""The read-only admin of stored keys, through the real admin site."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import formats, timezone
from factories import IdempotencyKeyFactory, UserFactory
from pytest_django.asserts import assertContains, assertNotContains

from django_idempotency.admin import BODY_PREVIEW_BYTES
from django_idempotency.models import IdempotencyKey
from django_idempotency.storage import RequestKey

pytestmark = pytest.mark.django_db

TABLE = IdempotencyKey._meta.db_table
CHANGELIST = "admin:django_idempotency_idempotencykey_changelist"


@pytest.fixture
def admin_client_logged_in(client: Client) -> Client:
    client.force_login(UserFactory(superuser=True))
    return client


def _change_url(row: IdempotencyKey) -> str:
    return reverse("admin:django_idempotency_idempotencykey_change", args=[row.pk])


def _shown(value: datetime) -> str:
    """A datetime as the admin lists it."""
    return str(formats.localize(timezone.template_localtime(value)))


def test_changelist_lists_keys_with_state_scope_status_and_times(
    admin_client_logged_in: Client,
) -> None:
    done = IdempotencyKeyFactory(key="order-1001", scope="user:4|orders/", response_status=201)
    running = IdempotencyKeyFactory(key="order-1002", scope="user:5|payments/", in_progress=True)

    response = admin_client_logged_in.get(reverse(CHANGELIST))

    assert response.status_code == 200
    for text in ("order-1001", "user:4|orders/", "201", "order-1002", "user:5|payments/"):
        assertContains(response, text)
    assertContains(response, "completed")
    assertContains(response, "in progress")
    assertContains(response, _shown(done.created_at))
    assertContains(response, _shown(done.expires_at))
    assertContains(response, _shown(running.expires_at))


def test_changelist_never_selects_bodies(admin_client_logged_in: Client) -> None:
    IdempotencyKeyFactory.create_batch(3, response_body=b"secret card number 4242")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client_logged_in.get(reverse(CHANGELIST))

    assert response.status_code == 200
    assertNotContains(response, "secret card number")
    row_selects = [
        q["sql"]
        for q in queries
        if q["sql"].lstrip().upper().startswith("SELECT")
        and TABLE in q["sql"]
        and "COUNT(" not in q["sql"].upper()
    ]
    listing = [sql for sql in row_selects if "expires_at" in sql and "scope" in sql]
    assert listing, row_selects  # the query that fetched the rows was seen
    for sql in row_selects:
        assert "response_body" not in sql
        assert "response_headers" not in sql


def test_detail_page_shows_a_body_preview(admin_client_logged_in: Client) -> None:
    row = IdempotencyKeyFactory(
        key="order-77",
        response_body=b"order 77 created",
        response_headers=[["Location", "/orders/77/"]],
    )

    response = admin_client_logged_in.get(_change_url(row))

    assert response.status_code == 200
    assertContains(response, "order-77")
    assertContains(response, "order 77 created")
    assertContains(response, "/orders/77/")
    assertContains(response, row.digest)


def test_detail_page_preview_of_a_large_body_is_cut(admin_client_logged_in: Client) -> None:
    body = b"a" * BODY_PREVIEW_BYTES + b"TAIL-NOT-SHOWN" + b"b" * 1000
    row = IdempotencyKeyFactory(response_body=body)

    response = admin_client_logged_in.get(_change_url(row))

    assert response.status_code == 200
    assertContains(response, "a" * BODY_PREVIEW_BYTES)
    assertContains(response, f"({len(body)} bytes)")
    assertNotContains(response, "TAIL-NOT-SHOWN")


def test_detail_page_of_a_binary_body(admin_client_logged_in: Client) -> None:
    row = IdempotencyKeyFactory(response_body=b"\x00\xff\xfePK\x03\x04 zip")

    response = admin_client_logged_in.get(_change_url(row))

    assert response.status_code == 200
    assertContains(response, "PK")


def test_detail_page_of_a_claim_in_progress(admin_client_logged_in: Client) -> None:
    row = IdempotencyKeyFactory(in_progress=True)

    response = admin_client_logged_in.get(_change_url(row))

    assert response.status_code == 200
    assertContains(response, "in progress")
    assertContains(response, row.owner)


def test_add_is_forbidden(admin_client_logged_in: Client) -> None:
    add_url = reverse("admin:django_idempotency_idempotencykey_add")

    assert admin_client_logged_in.get(add_url).status_code == 403
    assert admin_client_logged_in.post(add_url, {"key": "forged"}).status_code == 403
    assert not IdempotencyKey.objects.exists()


def test_change_is_forbidden(admin_client_logged_in: Client) -> None:
    row = IdempotencyKeyFactory(key="original", response_status=201)

    response = admin_client_logged_in.post(
        _change_url(row), {"key": "forged", "response_status": "200"}
    )

    assert response.status_code == 403
    row.refresh_from_db()
    assert (row.key, row.response_status) == ("original", 201)


def test_delete_is_forbidden(admin_client_logged_in: Client) -> None:
    row = IdempotencyKeyFactory()
    delete_url = reverse("admin:django_idempotency_idempotencykey_delete", args=[row.pk])

    assert admin_client_logged_in.get(delete_url).status_code == 403
    assert admin_client_logged_in.post(delete_url, {"post": "yes"}).status_code == 403
    assert IdempotencyKey.objects.filter(pk=row.pk).exists()


def test_bulk_delete_action_is_not_offered(admin_client_logged_in: Client) -> None:
    rows = IdempotencyKeyFactory.create_batch(2)

    page = admin_client_logged_in.get(reverse(CHANGELIST))
    response = admin_client_logged_in.post(
        reverse(CHANGELIST),
        {"action": "delete_selected", "_selected_action": [row.pk for row in rows], "post": "yes"},
    )

    assertNotContains(page, 'name="action"')
    assertNotContains(page, "delete_selected")
    assert response.status_code in (200, 302)
    assert IdempotencyKey.objects.count() == 2


def test_no_add_save_or_delete_buttons(admin_client_logged_in: Client) -> None:
    row = IdempotencyKeyFactory()

    changelist = admin_client_logged_in.get(reverse(CHANGELIST))
    detail = admin_client_logged_in.get(_change_url(row))

    assertNotContains(changelist, reverse("admin:django_idempotency_idempotencykey_add"))
    assertContains(changelist, "Select idempotency key to view")
    for name in ('name="_save"', 'name="_continue"', 'name="_addanother"'):
        assertNotContains(detail, name)
    assertNotContains(detail, 'class="deletelink"')
    assertNotContains(detail, "<textarea")


def test_search_by_key_and_by_the_logged_key_id(admin_client_logged_in: Client) -> None:
    wanted = IdempotencyKeyFactory(key="pay-123", scope="user:9|payments/")
    IdempotencyKeyFactory(key="pay-456")
    log_id = RequestKey(scope=wanted.scope, key=wanted.key, fingerprint="").log_id

    by_key = admin_client_logged_in.get(reverse(CHANGELIST), {"q": "pay-123"})
    by_log_id = admin_client_logged_in.get(reverse(CHANGELIST), {"q": log_id})

    for response in (by_key, by_log_id):
        assert response.status_code == 200
        assertContains(response, "pay-123")
        assertNotContains(response, "pay-456")


def test_staff_without_permission_cannot_see_keys(client: Client) -> None:
    client.force_login(UserFactory(is_staff=True))
    row = IdempotencyKeyFactory()

    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.get(_change_url(row)).status_code == 403


def test_anonymous_is_sent_to_the_login_page(client: Client) -> None:
    response = client.get(reverse(CHANGELIST))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
