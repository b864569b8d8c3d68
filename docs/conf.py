"""Sphinx configuration of the django-idempotency documentation.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(or ``tox -e docs``). The pages are written by hand; nothing is imported from
the package but its version, so no Django settings are needed.
"""

from __future__ import annotations

import logging
from typing import Any

import django_idempotency

project = "django-idempotency"
author = "The django-idempotency contributors"
copyright = "the django-idempotency contributors"
release = django_idempotency.__version__
version = ".".join(release.split(".")[:2])

extensions: list[str] = ["sphinx.ext.intersphinx", "sphinx.ext.extlinks"]

root_doc = "index"
exclude_patterns = ["_build"]
default_role = "literal"
nitpicky = True

# Django's and Python's own objects and settings link to their documentation
# through intersphinx: :class:`django.http.HttpResponse`, :func:`str`, and
# :setting:`LOGGING` for a setting of Django's (the package's own settings are
# declared in these pages, and win). The inventories are fetched at each build.
# Where they cannot be (a build without network access), the references stay
# plain text: the targets below are not reported as missing, and the
# unreachable inventory is reported as information, not as a warning (see
# setup()), so that -W builds pass offline.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", None),
    "django": (
        "https://docs.djangoproject.com/en/stable/",
        "https://docs.djangoproject.com/en/stable/_objects/",
    ),
}
intersphinx_timeout = 10
nitpick_ignore_regex = [
    (r"py:.*", r"(django|asgiref|re|datetime|collections|typing)\..*"),
    (r"py:class", r"(str|int|float|bool|bytes|dict|list|tuple|None|object|Exception)"),
]
#: Django's settings that the pages refer to with :setting:.
nitpick_ignore = [
    ("std:setting", name) for name in ("DATABASE-ATOMIC_REQUESTS", "INSTALLED_APPS", "LOGGING")
]

# Django REST framework publishes no Sphinx inventory (its documentation is
# built with MkDocs): :drf:`ModelViewSet <viewsets/#modelviewset>` links to a
# page of its API guide instead.
extlinks = {"drf": ("https://www.django-rest-framework.org/api-guide/%s", None)}

html_theme = "furo"
html_title = f"django-idempotency {release}"
html_static_path: list[str] = []
pygments_style = "sphinx"
pygments_dark_style = "monokai"


class _UnreachableInventory(logging.Filter):
    """Reports an intersphinx inventory that cannot be fetched as information.

    Sphinx logs it as a warning without a type, which ``suppress_warnings``
    cannot name, so a -W build without network access would fail on it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith(
            "failed to reach any of the inventories"
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.nonl = False  # a warning's default; information lines end here
        return True


def setup(app: Any) -> None:
    # Sphinx's logger of sphinx.ext.intersphinx (its "sphinx." namespace added).
    intersphinx_logger = logging.getLogger("sphinx.sphinx.ext.intersphinx")
    if not any(isinstance(f, _UnreachableInventory) for f in intersphinx_logger.filters):
        intersphinx_logger.addFilter(_UnreachableInventory())
    # ``.. setting:: TTL`` declares a key of the IDEMPOTENCY setting and
    # ``:setting:`TTL``` links to it, as in Django's own documentation.
    app.add_crossref_type(
        directivename="setting",
        rolename="setting",
        indextemplate="pair: %s; setting",
    )
