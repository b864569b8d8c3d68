"""The model of the database store."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class State(models.TextChoices):
    IN_PROGRESS = "in_progress", _("in progress")
    COMPLETED = "completed", _("completed")


class IdempotencyKey(models.Model):
    """One idempotency key: its claim while the view runs, then its response.

    ``digest`` (SHA-256 of scope and key) is the unique lookup column, so
    the unique index is small and fixed-width on every database. All times are
    written by the database's clock.

    On PostgreSQL the unique index uses ``varchar_pattern_ops``, so that it
    also serves the admin's search by digest prefix (a log id): one index to
    maintain per claim instead of Django's usual two for a unique
    ``CharField``.
    """

    digest = models.CharField(_("digest"), max_length=64)
    scope = models.TextField(_("scope"))
    key = models.CharField(_("key"), max_length=255)
    fingerprint = models.CharField(_("request fingerprint"), max_length=64)
    state = models.CharField(_("state"), max_length=16, choices=State)
    owner = models.CharField(_("owner token"), max_length=32)
    locked_until = models.DateTimeField(_("lease expires"), null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(_("status"), null=True, blank=True)
    response_headers = models.JSONField(_("headers"), null=True, blank=True)
    response_body = models.BinaryField(_("body"), null=True, blank=True)
    replayable = models.BooleanField(_("replayable"), default=True)
    created_at = models.DateTimeField(_("created"))
    expires_at = models.DateTimeField(_("expires"), db_index=True)

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = (
            models.UniqueConstraint(
                fields=["digest"],
                name="django_idempotency_unique_digest",
                opclasses=["varchar_pattern_ops"],
            ),
        )

    def __str__(self) -> str:
        return self.key
