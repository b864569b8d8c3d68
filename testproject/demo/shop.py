"""The demo's shop: a URL space that ``IdempotencyMiddleware`` protects.

No view here is decorated. The project's settings name the ``shop``
namespace in ``IDEMPOTENCY["PROTECTED_URLS"]`` and list the middleware last
in ``MIDDLEWARE``, so every POST, PUT, PATCH and DELETE under ``/shop/`` is
protected with the options of the setting:

- ``/shop/orders/``: a sync function view;
- ``/shop/async/orders/``: an async one;
- ``/shop/cbv/orders/``: a class-based view;
- ``/shop/api/orders/``: a DRF ``APIView`` without the mixin (where DRF is
  installed), which the middleware protects after DRF's authentication;
- ``/shop/express/orders/``: ``@idempotent(on_conflict="wait")``, whose own
  options the middleware leaves to it;
- ``/shop/basket/``: ``@idempotency_exempt``, left unprotected.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from demo.models import Order
from demo.views import created, order_fields
from django_idempotency.decorators import idempotency_exempt, idempotent

app_name = "shop"


@csrf_exempt
def place_order(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return JsonResponse({"orders": Order.objects.count()})
    return created(Order.objects.create(**order_fields(request)))


@csrf_exempt
async def place_order_async(request: HttpRequest) -> HttpResponse:
    return created(await Order.objects.acreate(**order_fields(request)))


@method_decorator(csrf_exempt, name="dispatch")
class OrderView(View):
    def post(self, request: HttpRequest) -> HttpResponse:
        return created(Order.objects.create(**order_fields(request)))


@csrf_exempt
@idempotent(on_conflict="wait", wait_timeout=5)
def place_express_order(request: HttpRequest) -> HttpResponse:
    return created(Order.objects.create(**order_fields(request)))


#: How many times /shop/basket/ ran: it is not protected.
basket_posts = [0]


@csrf_exempt
@idempotency_exempt
def basket(request: HttpRequest) -> HttpResponse:
    basket_posts[0] += 1
    return JsonResponse({"posts": basket_posts[0]})


urlpatterns: list[URLPattern] = [
    path("orders/", place_order, name="orders"),
    path("async/orders/", place_order_async, name="orders-async"),
    path("cbv/orders/", OrderView.as_view(), name="orders-cbv"),
    path("express/orders/", place_express_order, name="orders-express"),
    path("basket/", basket, name="basket"),
]

if settings.HAS_DRF:
    from rest_framework.generics import CreateAPIView

    from demo.api import OrderSerializer

    class ApiOrders(CreateAPIView[Order]):
        """A DRF view as most projects have them: no idempotency of its own."""

        serializer_class = OrderSerializer

    urlpatterns.append(path("api/orders/", ApiOrders.as_view(), name="api-orders"))
