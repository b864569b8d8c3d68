"""The protection of Django Ninja operations, at Ninja's own stages.

An operation runs in two layers: ``operation.run(request)`` checks
authentication and throttling, validates the parameters, calls
``operation.view_func`` with them and serializes what it returns into the
response. The protection wraps both:

* around ``view_func`` (reached only past authentication, throttling and
  validation), :func:`claiming` claims the key, with ``request.auth`` set;
  a replay or an error is returned from there, a response Ninja passes on
  as it is;
* around ``run``, :func:`finishing` completes the key with the serialized
  response, or releases it if the operation raised.

Which protection applies comes from ``run``'s side: the operation's own
(``@idempotent`` on it), or, for operations
:class:`~django_idempotency.middleware.IdempotencyMiddleware` protects, the
one the middleware marked the request with. :class:`NinjaCall` carries it
from one layer to the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from ninja.decorators import decorate_view
from ninja.operation import AsyncOperation, Operation

from django_idempotency import openapi
from django_idempotency.engine import Exchange, Idempotency
from django_idempotency.ninja.errors import error_renderer

#: The request attribute of the :class:`NinjaCall` of a protected operation.
CALL_ATTRIBUTE = "_idempotency_ninja_call"

#: The request attribute with the protection the middleware gives the
#: request's operation (see :func:`marked`).
MARK_ATTRIBUTE = "_idempotency_ninja_protection"

Resolve = Callable[[HttpRequest], Idempotency | None]


@dataclass
class NinjaCall:
    """One protected operation call: its protection, its operation, and the
    exchange once the key is claimed."""

    protection: Idempotency
    operation: Operation | None
    exchange: Exchange | None = None

    def errors(self) -> Callable[..., HttpResponseBase]:
        return error_renderer(getattr(self.operation, "api", None))


def own(protection: Idempotency) -> Resolve:
    """The operation's own protection, for every request."""
    return lambda request: protection


def by_middleware(request: HttpRequest) -> Idempotency | None:
    """The protection the middleware marked the request with, if any."""
    found: Idempotency | None = getattr(request, MARK_ATTRIBUTE, None)
    return found


# -- the two layers --------------------------------------------------------------------


def _entering(request: HttpRequest, resolve: Resolve, run: Any) -> NinjaCall | None:
    protection = resolve(request)
    if protection is None or getattr(request, CALL_ATTRIBUTE, None) is not None:
        return None
    call = NinjaCall(protection, getattr(run, "__self__", None))
    setattr(request, CALL_ATTRIBUTE, call)
    return call


def finishing(resolve: Resolve, is_async: bool) -> Callable[[Any], Any]:
    """The decorator of ``run``: completes or releases the claim made below."""

    def decorate(run: Any) -> Any:
        if is_async:

            @wraps(run)
            async def arun(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
                call = _entering(request, resolve, run)
                if call is None:
                    unprotected: HttpResponseBase = await run(request, **kwargs)
                    return unprotected
                try:
                    response: HttpResponseBase = await run(request, **kwargs)
                except BaseException:
                    if call.exchange is not None:
                        await call.exchange.aabort("exception")
                    raise
                finally:
                    delattr(request, CALL_ATTRIBUTE)
                if call.exchange is None:
                    return response
                return await call.exchange.afinish(response)

            return arun

        @wraps(run)
        def sync_run(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
            call = _entering(request, resolve, run)
            if call is None:
                return run(request, **kwargs)  # type: ignore[no-any-return]
            try:
                response = run(request, **kwargs)
            except BaseException as exc:
                if call.exchange is not None:
                    call.exchange.abort("exception", exc)
                raise
            finally:
                delattr(request, CALL_ATTRIBUTE)
            if call.exchange is None:
                return response  # type: ignore[no-any-return]
            return call.exchange.finish(response)

        return sync_run

    return decorate


def claiming(view_func: Any, is_async: bool, protection: Idempotency | None = None) -> Any:
    """``view_func`` claiming the key of a protected call first (``protection``:
    the operation's own, shown as the ``idempotency`` attribute)."""
    if is_async:

        @wraps(view_func)
        async def aclaim(request: HttpRequest, **values: Any) -> Any:
            call: NinjaCall | None = getattr(request, CALL_ATTRIBUTE, None)
            if call is None:
                return await view_func(request, **values)
            entered = await call.protection.aenter(request, errors=call.errors())
            if not isinstance(entered, Exchange):
                return entered if entered is not None else await view_func(request, **values)
            call.exchange = entered
            return await view_func(request, **values)

        wrapper: Any = aclaim
    else:

        @wraps(view_func)
        def claim(request: HttpRequest, **values: Any) -> Any:
            call: NinjaCall | None = getattr(request, CALL_ATTRIBUTE, None)
            if call is None:
                return view_func(request, **values)
            entered = call.protection.enter(request, errors=call.errors())
            if not isinstance(entered, Exchange):
                return entered if entered is not None else view_func(request, **values)
            call.exchange = entered
            try:
                return view_func(request, **values)
            except Exception:
                # Ninja answers it (its exception handlers): in atomic mode
                # the operation's writes roll back, as for DRF's.
                entered.answered_exception()
                raise

        wrapper = claim
    wrapper.idempotency = protection
    wrapper.idempotency_claims = True
    return wrapper


# -- protecting an operation -------------------------------------------------------------


def protect_own(operation: Operation, view_func: Any, protection: Idempotency) -> None:
    """Give ``operation`` (made from ``view_func``, the function under any
    ``@idempotent``) the protection of its decorator, in a way Ninja keeps
    when it copies the operation for each API a router is mounted on:
    ``view_func`` is copied, and ``run``'s decorators applied again."""
    claim = claiming(view_func, is_async(operation), protection)
    claim._ninja_operation = operation
    operation.view_func = claim
    decorate_view(finishing(own(protection), is_async(operation)))(claim)
    document(operation, protection)


def protect_for_middleware(operation: Operation) -> None:
    """Protect ``operation``, a bound one, when the middleware marks its
    request (once per operation; an operation protected by its own
    decorator is left alone)."""
    if getattr(operation.view_func, "idempotency_claims", False):
        return
    operation.view_func = claiming(operation.view_func, is_async(operation))
    operation.run = finishing(by_middleware, is_async(operation))(operation.run)  # type: ignore[method-assign]


def marked(view: Any, protection: Idempotency) -> Any:
    """``view``, a Ninja URL's view, marking its requests with ``protection``
    for the operations :func:`protect_for_middleware` protected."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def amark(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            setattr(request, MARK_ATTRIBUTE, protection)
            return await view(request, *args, **kwargs)

        return amark

    @wraps(view)
    def mark(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        setattr(request, MARK_ATTRIBUTE, protection)
        return view(request, *args, **kwargs)

    return mark


def is_async(operation: Operation) -> bool:
    """Whether Ninja runs ``operation`` as a coroutine (``operation.is_async``
    is set only after the callbacks of third-party code have run)."""
    return isinstance(operation, AsyncOperation)


# -- the OpenAPI schema ----------------------------------------------------------------------


def document(operation: Operation, protection: Idempotency) -> None:
    """Add the key header and the package's answers to the operation's
    OpenAPI schema, through ``openapi_extra``: worked out when the schema is
    made, from the settings then."""
    extra = dict(operation.openapi_extra or {})
    extra["parameters"] = _KeyParameter(protection, extra.get("parameters", ()))
    extra["responses"] = _Answers(protection, operation, extra.get("responses", {}))
    operation.openapi_extra = extra


class _KeyParameter(list[Any]):
    """The key header, as the list of parameters Ninja adds to the
    operation's (and any the operation set itself)."""

    def __init__(self, protection: Idempotency, others: Any) -> None:
        super().__init__(others)
        self.protection = protection

    def __iter__(self) -> Iterator[Any]:
        policy = self.protection.policy
        if policy.key_func is None:
            yield openapi.key_parameter(policy)
        yield from super().__iter__()


class _Answers(dict[Any, Any]):
    """The package's answers, as the dict of responses Ninja merges into the
    operation's; none for a status the operation documents itself."""

    def __init__(self, protection: Idempotency, operation: Operation, others: Any) -> None:
        super().__init__(others)
        self.protection = protection
        self.declared = set(operation.response_models)

    def _answers(self) -> Mapping[Any, Any]:
        policy = self.protection.policy
        content = None
        if policy.error_response in openapi.FORMATS:  # a format of the package's own
            _, media_type, schema = openapi.FORMATS[policy.error_response]
            content = {media_type: {"schema": schema(openapi.CODE_SCHEMA)}}
        answers: dict[Any, Any] = {}
        for status, answer in openapi.answers(policy).items():
            if status in self.declared:
                continue  # the operation documents it itself
            if content is not None:
                answer["content"] = content
            answers[status] = answer
        return {**answers, **dict(super().items())}

    def __iter__(self) -> Iterator[Any]:
        return iter(self._answers())

    def __getitem__(self, key: Any) -> Any:
        return self._answers()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._answers()

    def items(self) -> Any:
        return self._answers().items()

    def keys(self) -> Any:
        return self._answers().keys()
