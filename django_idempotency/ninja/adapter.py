"""``@idempotent`` and the middleware on Django Ninja operations.

``@idempotent`` above ``@api.post(...)`` finds the operation Ninja made;
below it, Ninja hands the operation over when it makes it (its callbacks
for third-party code). The middleware gets the Django view of a Ninja URL,
which serves the operations of one path, one per method.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any

from ninja.operation import Operation, PathView
from ninja.utils import contribute_operation_callback

from django_idempotency.decorators import ViewAdapter, register_adapter
from django_idempotency.engine import Idempotency
from django_idempotency.ninja import operations


class NinjaAdapter(ViewAdapter):
    """Ninja's operations, protected at Ninja's own stages
    (:mod:`django_idempotency.ninja.operations`)."""

    def protect(self, view: Any, options: Mapping[str, Any]) -> Any | None:
        operation = getattr(view, "_ninja_operation", None)
        if isinstance(operation, Operation):  # above @api.post(...)
            operations.protect_own(operation, operation.view_func, Idempotency(options))
            return view
        path_view = path_view_of(view)
        if path_view is None:
            return None
        # A Ninja URL's view, which the middleware protects.
        for each in path_view.operations:
            operations.protect_for_middleware(each)
        return operations.marked(view, Idempotency(options))

    def protects_itself(self, view: Any, method: str) -> bool:
        path_view = path_view_of(view)
        if path_view is None:
            return False
        found = next((op for op in path_view.operations if method in op.methods), None)
        return found is not None and getattr(found.view_func, "idempotency", None) is not None

    def decorated(self, view: Any, protection: Idempotency) -> None:
        # Below @api.post(...): should Ninja make an operation of the
        # function, the operation gets the protection at Ninja's stages, and
        # the function the decorator wrapped is called without the wrapper.
        def adopt(operation: Operation) -> None:
            operations.protect_own(operation, view.__wrapped__, protection)

        contribute_operation_callback(view, adopt)
        # Ninja reads the parameters' annotations from the wrapper, and
        # resolves those that are strings (from __future__ import
        # annotations) in the wrapper's module: it gets them resolved.
        # (Not for a name defined later, or only for type checkers.)
        with contextlib.suppress(Exception):
            view.__signature__ = inspect.signature(view.__wrapped__, eval_str=True)


def path_view_of(view: Any) -> PathView | None:
    """The ``PathView`` whose operations ``view``, a Django view that Ninja
    made for one path (``PathView.get_view()``), serves; None for any other
    view. Ninja's view is a closure over its ``PathView``."""
    if not getattr(view, "csrf_exempt", False):  # every Ninja view is
        return None
    for cell in getattr(view, "__closure__", None) or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(contents, PathView):
            return contents
    return None


register_adapter(NinjaAdapter())
