from __future__ import annotations

import importlib.util

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
        # with the core when imported: DRF's and drf-spectacular's when they
        # are in INSTALLED_APPS (one merely installed is not imported), Django
        # Ninja's when it is installed (it has no app to look for).
        if apps.is_installed("rest_framework"):
            # @idempotent on @api_view functions and API view handlers.
            import django_idempotency.rest_framework
        if importlib.util.find_spec("ninja") is not None:
            # @idempotent and the middleware on Django Ninja operations.
            import django_idempotency.ninja  # noqa: F401
        if apps.is_installed("drf_spectacular"):
            # Registers the OpenAPI extension: the idempotency header and answers.
            from django_idempotency.rest_framework import schema  # noqa: F401
