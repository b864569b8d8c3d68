from __future__ import annotations

from django.urls import path

from demo import views

urlpatterns = [
    path("orders/", views.create_order, name="orders"),
    path("async/orders/", views.create_order_async, name="orders-async"),
    path("cbv/orders/", views.OrderView.as_view(), name="orders-cbv"),
    path("slow/orders/", views.create_order_slowly, name="orders-slow"),
    path("slow/orders/conflict/", views.create_order_slowly_conflict, name="orders-slow-conflict"),
    path("short-lived/orders/", views.create_order_short_lived, name="orders-short-lived"),
]
