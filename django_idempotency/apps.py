from __future__ import annotations

from django.apps import AppConfig, apps
from django.utils.translation import gettext_lazy as _


class IdempotencyConfig(AppConfig):
    name = "django_idempotency"
    label = "django_idempotency"
    verbose_name = _("Idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_idempotency import checks  # noqa: F401  (registers the checks)

        # A project that uses drf-spectacular lists it in INSTALLED_APPS; one
        # that merely has it installed does not get it (and DRF) imported.
        if apps.is_installed("drf_spectacular"):
            # Registers the OpenAPI extension: the idempotency header and answers.
            from django_idempotency.rest_framework import schema  # noqa: F401
