"""Sphinx configuration of the django-idempotency documentation.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(or ``tox -e docs``). The pages are written by hand; nothing is imported from
the package but its version, so no Django settings are needed.
"""

from __future__ import annotations

from typing import Any

import django_idempotency

project = "django-idempotency"
author = "The django-idempotency contributors"
copyright = "the django-idempotency contributors"
release = django_idempotency.__version__
version = ".".join(release.split(".")[:2])

extensions: list[str] = []

root_doc = "index"
exclude_patterns = ["_build"]
default_role = "literal"
nitpicky = True
# Targets outside these pages (Django's and Python's own objects) are not linked:
# the documentation builds without network access.
nitpick_ignore_regex = [
    (r"py:.*", r"(django|asgiref|re|datetime|collections|typing)\..*"),
    (r"py:class", r"(str|int|float|bool|bytes|dict|list|tuple|None|object|Exception)"),
]

html_theme = "furo"
html_title = f"django-idempotency {release}"
html_static_path: list[str] = []
pygments_style = "sphinx"
pygments_dark_style = "monokai"


def setup(app: Any) -> None:
    # ``.. setting:: TTL`` declares a key of the IDEMPOTENCY setting and
    # ``:setting:`TTL``` links to it, as in Django's own documentation.
    app.add_crossref_type(
        directivename="setting",
        rolename="setting",
        indextemplate="pair: %s; setting",
    )
