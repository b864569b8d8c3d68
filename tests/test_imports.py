"""What importing the package needs, and what it pulls in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_decorating_a_view_needs_no_configured_settings() -> None:
    # A views module may be imported by tooling before Django is set up.
    result = _run(
        """
        from django_idempotency.decorators import idempotent

        @idempotent(ttl=60, header="X-Idempotency-Key")
        def view(request):
            return None

        print(callable(view))
        """
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_the_core_never_imports_drf_or_django_redis() -> None:
    result = _run(
        """
        import sys
        import django
        django.setup()
        import django_idempotency.admin, django_idempotency.checks
        import django_idempotency.decorators, django_idempotency.engine
        from django_idempotency.storage import DatabaseStorage
        from django_idempotency.checks import check_settings
        check_settings()  # (Django's own cache checks load every cache backend)
        print(sorted(m for m in ("rest_framework", "django_redis", "redis") if m in sys.modules))
        """,
        DJANGO_SETTINGS_MODULE="testproject.settings",
        # Without DRF's apps in INSTALLED_APPS, which import DRF themselves.
        IDEMPOTENCY_TEST_CORE_ONLY="1",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p.endswith("testproject")),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
