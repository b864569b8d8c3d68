"""A read-only admin for stored keys."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from django_idempotency.models import IdempotencyKey

#: How much of a stored body the detail page shows.
BODY_PREVIEW_BYTES = 2048


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("key", "scope", "state", "response_status", "created_at", "expires_at")
    list_filter = ("state", "response_status")
    search_fields = ("=key", "^digest")  # a log id is a digest prefix
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    fields = (
        "key",
        "scope",
        "digest",
        "fingerprint",
        "state",
        "owner",
        "locked_until",
        "created_at",
        "expires_at",
        "response_status",
        "replayable",
        "response_headers",
        "body_preview",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[IdempotencyKey]:
        queryset = super().get_queryset(request)
        match = request.resolver_match
        if match is not None and (match.url_name or "").endswith("_changelist"):
            # Bodies can be large and may hold personal data: never in lists.
            queryset = queryset.defer("response_body", "response_headers")
        return queryset

    @admin.display(description=_("body (start)"))
    def body_preview(self, obj: IdempotencyKey) -> str:
        body = bytes(obj.response_body or b"")
        preview = body[:BODY_PREVIEW_BYTES].decode("utf-8", "replace")
        if len(body) > BODY_PREVIEW_BYTES:
            preview += f"… ({len(body)} bytes)"
        return preview

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
