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

        # The adapters of the frameworks a project uses register themselves
        # with the core when imported; one that is merely installed is not
        # imported (nor are DRF and drf-spectacular).
        if apps.is_installed("rest_framework"):
            # @idempotent on @api_view functions and API view handlers.
            import django_idempotency.rest_framework  # noqa: F401
        if apps.is_installed("drf_spectacular"):
            # Registers the OpenAPI extension: the idempotency header and answers.
            from django_idempotency.rest_framework import schema  # noqa: F401
