from __future__ import annotations

import os

from django.urls import include, path

from demo import views

urlpatterns = [
    path("orders/", views.create_order, name="orders"),
    path("async/orders/", views.create_order_async, name="orders-async"),
    path("cbv/orders/", views.OrderView.as_view(), name="orders-cbv"),
    path("slow/orders/", views.create_order_slowly, name="orders-slow"),
    path("slow/orders/conflict/", views.create_order_slowly_conflict, name="orders-slow-conflict"),
    path("short-lived/orders/", views.create_order_short_lived, name="orders-short-lived"),
]

# Endpoints that kill their worker mid-request, for the crash tests only.
if os.environ.get("IDEMPOTENCY_TEST_FAULTS") == "1":
    urlpatterns += [path("", include("demo.faults"))]
