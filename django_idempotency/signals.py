"""Signals sent as keys are claimed, replayed, refused and released.

Each is sent with ``sender`` the store's class and the keyword arguments
``request`` (the ``HttpRequest``) and ``key`` (a
:class:`~django_idempotency.storage.RequestKey`).
"""

from __future__ import annotations

from django.dispatch import Signal

#: A request claimed its key and its view is about to run.
key_claimed = Signal()
#: The view's response was stored; duplicates will be answered with it.
key_completed = Signal()
#: A duplicate was answered from the store (a replay or ``duplicate_response``).
key_replayed = Signal()
#: A duplicate arrived while the first request with its key was still running.
key_conflict = Signal()
#: A key was reused with a different request and refused.
key_mismatch = Signal()
#: A claim was given up (the view raised, or ``store_if`` refused its
#: response, by default a 5xx), so a retry runs the view again.
key_released = Signal()
