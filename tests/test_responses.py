"""What of a view's response is stored and replayed, and what never is."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template import engines
from django.template.response import TemplateResponse
from django.test import AsyncClient, Client
from helpers import asend, orders, problem, replayed, send

from demo.models import Order
from django_idempotency.decorators import idempotent
from django_idempotency.models import IdempotencyKey


def new_order() -> Order:
    return Order.objects.create(item="response test")


# -- headers ---------------------------------------------------------------------------------


def with_exchange_headers(request: HttpRequest) -> HttpResponse:
    order = new_order()
    response = JsonResponse({"id": order.pk}, status=201)
    response.set_cookie("basket", f"b-{order.pk}", httponly=True)
    response["Date"] = "Tue, 14 Nov 2023 22:13:20 GMT"
    response["X-Request-Id"] = f"req-{order.pk}"
    response["Vary"] = "Accept-Language, X-Tenant"
    response["Cache-Control"] = "private, max-age=60"
    response["Expires"] = "Tue, 14 Nov 2023 22:14:20 GMT"
    response["Age"] = "3"
    response["Server"] = "payments-7"
    response["WWW-Authenticate"] = 'Bearer realm="api"'
    response["Content-Language"] = "de"
    response["Location"] = f"/orders/{order.pk}/"
    return response


@pytest.mark.django_db
class TestHeaders:
    @pytest.fixture
    def url(self, serve: Callable[..., str]) -> str:
        return serve(idempotent(with_exchange_headers))

    def test_first_response_is_the_views_own(self, client: Client, url: str) -> None:
        first = send(client, url)

        order_id = first.json()["id"]
        assert first.cookies["basket"].value == f"b-{order_id}"
        assert first["X-Request-Id"] == f"req-{order_id}"
        assert "X-Tenant" in first["Vary"]
        assert "Idempotent-Replayed" not in first.headers

    @pytest.mark.parametrize(
        "name",
        [
            "Date",
            "X-Request-Id",
            "Cache-Control",
            "Expires",
            "Age",
            "Server",
            "WWW-Authenticate",
        ],
    )
    def test_per_exchange_headers_are_not_replayed(
        self, client: Client, url: str, name: str
    ) -> None:
        send(client, url)

        retry = send(client, url)

        assert replayed(retry)
        assert name not in retry.headers

    def test_cookies_are_not_replayed(self, client: Client, url: str) -> None:
        send(client, url)

        retry = send(Client(), url)

        assert replayed(retry)
        assert "basket" not in retry.cookies

    def test_vary_of_the_view_is_replayed(self, client: Client, url: str) -> None:
        # Vary says which request headers chose the representation: caches need it.
        first = send(client, url)

        retry = send(client, url)

        assert replayed(retry)
        assert retry["Vary"] == first["Vary"]
        assert "X-Tenant" in retry["Vary"]

    def test_representation_headers_are_replayed(self, client: Client, url: str) -> None:
        first = send(client, url)

        retry = send(client, url)

        for name in ("Content-Type", "Content-Language", "Location", "Vary"):
            assert retry[name] == first[name]
        assert IdempotencyKey.objects.get().response_headers is not None
        stored = {name.lower() for name, _ in IdempotencyKey.objects.get().response_headers}
        assert stored == {"content-type", "content-language", "location", "vary"}

    @pytest.mark.parametrize(
        "options",
        [
            pytest.param({}, id="default"),
            pytest.param({"replay_headers": ["Set-Cookie"]}, id="listed"),
        ],
    )
    def test_raw_set_cookie_header_is_not_stored(
        self, client: Client, serve: Callable[..., str], options: dict[str, Any]
    ) -> None:
        def raw_cookie(request: HttpRequest) -> HttpResponse:
            new_order()
            response = HttpResponse("ok", status=201)
            response["Set-Cookie"] = "session=abc123; HttpOnly"
            return response

        url = serve(idempotent(**options)(raw_cookie))
        assert send(client, url)["Set-Cookie"] == "session=abc123; HttpOnly"

        retry = send(client, url)

        assert replayed(retry)
        assert "Set-Cookie" not in retry.headers
        assert "abc123" not in json.dumps(IdempotencyKey.objects.get().response_headers)


# -- bodies ----------------------------------------------------------------------------------


@pytest.mark.django_db
class TestBodies:
    def test_binary_body_is_replayed_byte_for_byte(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        payload = bytes(range(256)) * 4

        def pdf(request: HttpRequest) -> HttpResponse:
            new_order()
            return HttpResponse(payload, content_type="application/pdf", status=201)

        url = serve(idempotent(pdf))
        send(client, url)

        retry = send(client, url)

        assert retry.content == payload
        assert retry["Content-Type"] == "application/pdf"
        assert orders() == 1

    def test_response_without_content_type_is_replayed_without(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        def no_content(request: HttpRequest) -> HttpResponse:
            new_order()
            response = HttpResponse(status=204)
            del response["Content-Type"]
            return response

        url = serve(idempotent(no_content))
        assert "Content-Type" not in send(client, url).headers

        retry = send(client, url)

        assert retry.status_code == 204
        assert replayed(retry)
        assert "Content-Type" not in retry.headers

    def test_redirect_is_replayed(self, client: Client, serve: Callable[..., str]) -> None:
        def redirect(request: HttpRequest) -> HttpResponse:
            order = new_order()
            return HttpResponseRedirect(f"/orders/{order.pk}/", status=303)

        url = serve(idempotent(redirect))
        first = send(client, url)

        retry = send(client, url)

        assert retry.status_code == 303
        assert retry["Location"] == first["Location"]
        assert orders() == 1

    def test_non_ascii_json_is_replayed(self, client: Client, serve: Callable[..., str]) -> None:
        def greeting(request: HttpRequest) -> HttpResponse:
            new_order()
            return JsonResponse(
                {"message": "Gr\u00fc\u00dfe \u2014 \u65e5\u672c"},
                json_dumps_params={"ensure_ascii": False},
                status=201,
            )

        url = serve(idempotent(greeting))
        first = send(client, url)

        retry = send(client, url)

        assert retry.content == first.content
        assert retry.json() == {"message": "Gr\u00fc\u00dfe \u2014 \u65e5\u672c"}


# -- what cannot be stored -------------------------------------------------------------------


def streaming(request: HttpRequest) -> StreamingHttpResponse:
    order = new_order()

    def rows() -> Iterator[bytes]:
        yield b"id,item\n"
        yield f"{order.pk},{order.item}\n".encode()

    return StreamingHttpResponse(rows(), content_type="text/csv", status=201)


def file_download(request: HttpRequest) -> FileResponse:
    new_order()
    return FileResponse(io.BytesIO(b"%PDF-1.7 receipt"), as_attachment=True, filename="r.pdf")


def too_big(request: HttpRequest) -> HttpResponse:
    new_order()
    return HttpResponse(b"z" * 2048, status=202)


@pytest.mark.django_db
class TestNotStored:
    @pytest.mark.parametrize(
        ("view", "options", "status"),
        [
            pytest.param(streaming, {}, 201, id="streaming"),
            pytest.param(file_download, {"max_body_size": 8}, 200, id="file over max_body_size"),
            pytest.param(too_big, {"max_body_size": 1024}, 202, id="over max_body_size"),
        ],
    )
    def test_duplicate_is_told_the_response_was_not_stored(
        self,
        client: Client,
        serve: Callable[..., str],
        view: Callable[..., HttpResponseBase],
        options: dict[str, Any],
        status: int,
    ) -> None:
        url = serve(idempotent(**options)(view))
        first = send(client, url)
        assert first.status_code == status
        first_body = first.getvalue()

        duplicate = send(client, url)

        document = problem(duplicate, 409, "idempotency_response_not_stored")
        assert document["original_status"] == status
        assert orders() == 1
        assert first_body
        row = IdempotencyKey.objects.get()
        assert row.replayable is False
        assert row.response_status == status

    def test_first_gets_its_stream(self, client: Client, serve: Callable[..., str]) -> None:
        url = serve(idempotent(streaming))

        first = send(client, url)

        assert first.streaming
        pk = Order.objects.get().pk
        assert b"".join(first.streaming_content) == f"id,item\n{pk},response test\n".encode()

    def test_first_gets_its_file(self, client: Client, serve: Callable[..., str]) -> None:
        url = serve(idempotent(file_download))

        first = send(client, url)

        assert first.getvalue() == b"%PDF-1.7 receipt"
        assert first["Content-Disposition"] == 'attachment; filename="r.pdf"'


# -- template responses ----------------------------------------------------------------------


def greeting_page(request: HttpRequest) -> TemplateResponse:
    order = new_order()
    template = engines["django"].from_string("<p>Order {{ order.pk }} for {{ name }}{{ mark }}</p>")
    return TemplateResponse(request, template, {"order": order, "name": "Ada"}, status=201)


class MarkTemplateResponses:
    """Template-response middleware: adds to the context before rendering."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_template_response(
        self, request: HttpRequest, response: TemplateResponse
    ) -> TemplateResponse:
        assert response.context_data is not None
        response.context_data["mark"] = "!"
        return response


@pytest.mark.django_db
class TestTemplateResponse:
    def test_rendered_stored_and_replayed(self, client: Client, serve: Callable[..., str]) -> None:
        url = serve(idempotent(greeting_page))
        first = send(client, url)

        retry = send(client, url)

        assert first.status_code == 201
        assert first.content == f"<p>Order {Order.objects.get().pk} for Ada</p>".encode()
        assert retry.status_code == 201
        assert retry.content == first.content
        assert retry["Content-Type"] == "text/html; charset=utf-8"
        assert replayed(retry)
        assert bytes(IdempotencyKey.objects.get().response_body) == first.content
        assert orders() == 1

    def test_template_response_middleware_still_applies(
        self, client: Client, serve: Callable[..., str], settings: Any
    ) -> None:
        settings.MIDDLEWARE = [*settings.MIDDLEWARE, f"{__name__}.MarkTemplateResponses"]
        plain = serve(greeting_page, "plain/")
        assert send(client, plain, key="plain").content.endswith(b"Ada!</p>")
        url = serve(idempotent(greeting_page))

        first = send(client, url)
        retry = send(client, url)

        assert first.content.endswith(b"Ada!</p>")
        assert retry.content == first.content

    def test_rendering_error_releases_the_key(
        self, client: Client, serve: Callable[..., str]
    ) -> None:
        renders: list[int] = []

        class Quote:
            @property
            def total(self) -> str:
                renders.append(1)
                if len(renders) == 1:
                    raise ConnectionError("pricing service down")
                return "12.50"

        def quote_page(request: HttpRequest) -> TemplateResponse:
            new_order()
            template = engines["django"].from_string("<p>Total {{ quote.total }}</p>")
            return TemplateResponse(request, template, {"quote": Quote()}, status=201)

        url = serve(idempotent(quote_page))
        with pytest.raises(ConnectionError, match="pricing service down"):
            send(client, url)

        retry = send(client, url)

        assert retry.status_code == 201
        assert retry.content == b"<p>Total 12.50</p>"
        assert not replayed(retry)
        assert replayed(send(client, url))
        assert orders() == 2


async def order_list_page(request: HttpRequest) -> TemplateResponse:
    await Order.objects.acreate(item="async page")
    template = engines["django"].from_string("{% for o in orders %}[{{ o.item }}]{% endfor %}")
    # A lazy queryset: evaluated while rendering, after the view returned.
    return TemplateResponse(request, template, {"orders": Order.objects.all()}, status=201)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_orm_thread_connections")
async def test_async_view_template_response_rendering_reads_the_database(
    async_client: AsyncClient, serve: Callable[..., str]
) -> None:
    url = serve(idempotent(order_list_page))

    first = await asend(async_client, url, {})
    retry = await asend(async_client, url, {})

    assert first.status_code == 201
    assert first.content == b"[async page]"
    assert retry.content == first.content
    assert replayed(retry)
    assert await Order.objects.acount() == 1
