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


def _package_imports(*, external: bool = False) -> dict[str, set[str]]:
    """Each module of the package, and the modules of the package it
    imports anywhere: at the top, inside functions, or for type checking;
    with ``external``, every module it imports, the package's or not."""
    import ast
    from pathlib import Path

    import django_idempotency

    root = Path(django_idempotency.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = ["django_idempotency", *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # "from package import module" imports the module.
                imported = [
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}" in modules
                    else node.module
                    for alias in node.names
                ]
            else:
                continue
            targets.update(m for m in imported if (external or m in modules) and m != name)
    return graph


def test_no_module_of_the_package_imports_itself_back() -> None:
    """No import cycle, through lazy imports either: each module builds on
    the ones below it (records, errors; the stores' base; conf; policy;
    the engine; the adapters), never on one above."""
    graph = _package_imports()
    cycles = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])

    assert len(graph) > 30
    assert graph["django_idempotency.responses"] == {"django_idempotency.records"}
    assert cycles == []


def test_the_values_stores_and_adapters_share_import_nothing_of_the_package() -> None:
    assert _package_imports()["django_idempotency.records"] == set()


def test_the_core_knows_no_adapter() -> None:
    """Dependencies point one way: the DRF adapter builds on the core and
    registers what the decorator needs of it; no module of the core imports
    DRF, drf-spectacular or the adapter (the app config, which imports the
    adapters of the frameworks a project has installed, aside)."""
    adapter = ("rest_framework", "drf_spectacular", "django_idempotency.rest_framework")
    core = {
        module: targets
        for module, targets in _package_imports(external=True).items()
        if not module.startswith("django_idempotency.rest_framework")
        and module != "django_idempotency.apps"
    }

    reaching = {
        module: sorted(t for t in targets if t.startswith(adapter))
        for module, targets in core.items()
    }

    assert "django_idempotency.decorators" in reaching
    assert {module: found for module, found in reaching.items() if found} == {}
