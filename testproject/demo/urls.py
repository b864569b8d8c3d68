from __future__ import annotations

import os

from django.conf import settings
from django.urls import URLPattern, URLResolver, include, path

from demo import payments, views
from demo.rpc_api import rpc

urlpatterns: list[URLPattern | URLResolver] = [
    path("orders/", views.create_order, name="orders"),
    path("async/orders/", views.create_order_async, name="orders-async"),
    path("cbv/orders/", views.OrderView.as_view(), name="orders-cbv"),
    path("slow/orders/", views.create_order_slowly, name="orders-slow"),
    path("slow/orders/conflict/", views.create_order_slowly_conflict, name="orders-slow-conflict"),
    path("short-lived/orders/", views.create_order_short_lived, name="orders-short-lived"),
    # JSON-RPC, another framework, through an adapter of its own (demo.rpc_idempotency).
    path("rpc/", rpc.view, name="rpc"),
    path("async/rpc/", rpc.aview, name="rpc-async"),
    # A Stripe-style API, answering with Stripe's errors (demo.payments).
    path("payments/v1/charges", payments.charges, name="payments-charges"),
    # Protected by IdempotencyMiddleware (IDEMPOTENCY["PROTECTED_URLS"] in settings).
    path("shop/", include("demo.shop")),
]

# Django REST framework endpoints, where it is installed; /api/ lists the router's.
if settings.HAS_DRF:
    from rest_framework.routers import DefaultRouter

    from demo import api

    router = DefaultRouter()
    router.register("orders", api.OrderViewSet, basename="api-orders")
    urlpatterns += [
        path("api/", include(router.urls)),
        path("api/slow/orders/", api.SlowOrders.as_view(), name="api-orders-slow"),
        path("api/function/orders/", api.create_order, name="api-orders-function"),
    ]
# Django Ninja endpoints, where it is installed (demo/ninja_api.py).
if settings.HAS_NINJA:
    from demo.ninja_api import api as ninja_api

    urlpatterns += [path("ninja/", ninja_api.urls)]
if settings.HAS_SPECTACULAR:
    from drf_spectacular.views import SpectacularAPIView

    urlpatterns += [path("api/schema/", SpectacularAPIView.as_view(), name="api-schema")]

# Endpoints that kill their worker mid-request, for the crash tests only.
if os.environ.get("IDEMPOTENCY_TEST_FAULTS") == "1":
    urlpatterns += [path("", include("demo.faults"))]

# The benchmarks' endpoints (benchmarks/run.py).
if os.environ.get("IDEMPOTENCY_BENCH") == "1":
    urlpatterns += [path("", include("demo.bench"))]
