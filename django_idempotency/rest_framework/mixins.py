"""``IdempotencyMixin``: the protection of DRF API views and viewsets.

The mixin hooks DRF's own stages. ``initial()`` claims the key once DRF has
authenticated the request and checked permissions and throttles, so a
request refused there claims nothing. ``finalize_response()`` completes the
key with the response, stored once DRF rendered it; ``handle_exception()``
releases it when the view raised something DRF does not turn into a
response. Every decision is the exchange's (:mod:`django_idempotency.exchange`).

Options are parsed once per view class (its ``idempotency_*`` attributes),
once per ``as_view()`` that sets some (``@action`` does), and once per
distinct set of options returned by ``get_idempotency_options()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final

from django.http import HttpRequest, HttpResponseBase
from rest_framework.request import Request
from rest_framework.views import APIView

from django_idempotency import conf
from django_idempotency.engine import Exchange, Idempotency, protects
from django_idempotency.fingerprint import is_multipart
from django_idempotency.rest_framework.exceptions import error_renderer
from django_idempotency.rest_framework.view_schema import ProtectedSchema

if TYPE_CHECKING:
    _Base = APIView
else:
    _Base = object


class _Unset:
    """The value of an ``idempotency_*`` attribute that the view leaves to
    the ``IDEMPOTENCY`` setting."""

    _instance: ClassVar[_Unset | None] = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


#: The default of every ``idempotency_*`` attribute: use the setting.
UNSET: Final = _Unset()

ATTRIBUTE_PREFIX = "idempotency_"

#: The prefix of the per-option methods of earlier versions, refused when
#: the class is defined (get_idempotency_options() decides per request).
GETTER_PREFIX = "get_idempotency_"


class _Answer(Exception):
    """Raised by ``initial()`` to answer instead of the handler (a replay, a
    conflict, a refused key); ``handle_exception()`` returns the response."""

    def __init__(self, response: HttpResponseBase) -> None:
        super().__init__(response)
        self.response = response


class IdempotencyMixin(_Base):
    """Make a DRF ``APIView``, generic view or viewset idempotent.

    List it before the view class: ``class Orders(IdempotencyMixin,
    ModelViewSet)``. Every per-view option of ``@idempotent`` is a class
    attribute named ``idempotency_<option>`` (``idempotency_ttl = 3600``),
    also accepted by ``as_view()`` and ``@action(...)``. Options decided per
    request come from :meth:`get_idempotency_options`. Attributes left
    ``UNSET`` take the ``IDEMPOTENCY`` setting.
    """

    idempotency_storage: Any = UNSET
    idempotency_header: str | _Unset = UNSET
    idempotency_key_func: Callable[[HttpRequest], object] | str | _Unset | None = UNSET
    idempotency_required: bool | _Unset = UNSET
    idempotency_key_pattern: Any = UNSET
    idempotency_methods: Any = UNSET
    idempotency_scope_func: Callable[[HttpRequest], str] | str | _Unset = UNSET
    idempotency_fingerprint_func: Callable[[HttpRequest], str] | str | _Unset = UNSET
    idempotency_ttl: float | timedelta | _Unset = UNSET
    idempotency_lock_timeout: float | timedelta | _Unset = UNSET
    idempotency_max_lock_time: float | timedelta | _Unset = UNSET
    idempotency_completion_timeout: float | timedelta | _Unset = UNSET
    idempotency_store_if: Callable[[HttpResponseBase], bool] | str | _Unset = UNSET
    idempotency_on_conflict: int | str | _Unset = UNSET
    idempotency_wait_timeout: float | timedelta | _Unset = UNSET
    idempotency_replay_status: int | _Unset | None = UNSET
    idempotency_replay_headers: Any = UNSET
    idempotency_duplicate_response: Any = UNSET
    idempotency_error_response: Any = UNSET
    idempotency_fail_open: bool | _Unset = UNSET
    idempotency_max_body_size: int | _Unset = UNSET
    idempotency_atomic: bool | _Unset = UNSET

    schema = ProtectedSchema()

    #: The protection of the view's own options: those of its class, set
    #: when the class is made, or with those ``as_view()`` was given.
    _idempotency_protection: ClassVar[Idempotency]

    #: The exchange of the claim this request owns, from ``initial()``
    #: until the key is completed or released.
    _idempotency_exchange: Exchange | None = None

    # -- parsed when the class is defined and when as_view() is called ---------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if APIView in mro and mro.index(APIView) < mro.index(IdempotencyMixin):
            raise TypeError(
                f"{cls.__qualname__}: list IdempotencyMixin before the DRF view class, "
                f"as in class {cls.__name__}(IdempotencyMixin, APIView); after it, "
                "DRF's stages run without the mixin's."
            )
        for name in vars(cls):
            # A misspelt option (idempotency_tll = 60) is refused here, when
            # the class is defined, with the closest option's name, as the
            # decorator refuses a misspelt keyword.
            option = name.removeprefix(ATTRIBUTE_PREFIX)
            if name.startswith(ATTRIBUTE_PREFIX) and option not in conf.PER_VIEW_OPTIONS:
                raise TypeError(conf.unknown_option(option, _label(cls)))
            if name.startswith(GETTER_PREFIX) and name != "get_idempotency_options":
                raise TypeError(
                    f"{cls.__qualname__}.{name}: options are decided per request by "
                    f"get_idempotency_options(), as in: def get_idempotency_options(self): "
                    f"return {{{name.removeprefix(GETTER_PREFIX)!r}: ...}}"
                )
        cls._idempotency_protection = Idempotency(_attributes(cls), label=_label(cls))
        own_schema = vars(cls).get("schema")
        if own_schema is not None and not isinstance(own_schema, ProtectedSchema):
            cls.schema = ProtectedSchema(own_schema)

    @classmethod
    def as_view(cls, *args: Any, **initkwargs: Any) -> Any:
        initkwargs.pop("_idempotency_protection", None)  # another as_view()'s
        options = {
            name.removeprefix(ATTRIBUTE_PREFIX): value
            for name, value in initkwargs.items()
            if name.startswith(ATTRIBUTE_PREFIX)
        }
        if options:
            # Each route's view gets its protection as it gets its options:
            # as an attribute set from initkwargs.
            merged = {**_attributes(cls), **options}
            initkwargs["_idempotency_protection"] = Idempotency(merged, label=_label(cls))
        return super().as_view(*args, **initkwargs)

    # -- per request ----------------------------------------------------------------

    def get_idempotency_options(self) -> Mapping[str, Any]:
        """Options of this request, over the view's own: ``{}`` here.

        Override it to decide options per request, from ``self.request``
        (authenticated by then, its data parsed on demand) or
        ``self.action``; ``UNSET`` as a value leaves that option to the
        setting. The options are parsed once per distinct set returned."""
        return {}

    # -- DRF's stages ---------------------------------------------------------------

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self._idempotency_exchange = None
        idempotency = None
        if self._idempotency_handled(request):
            idempotency = view_protection(self, request)
            if protects(request, idempotency.policy):
                # An authentication or permission class that reads
                # request.data would otherwise consume the stream first.
                _keep_body(request)
        super().initial(request, *args, **kwargs)
        if idempotency is None:
            return
        entered = idempotency.enter(request, errors=error_renderer(self))
        if isinstance(entered, Exchange):
            self._idempotency_exchange = entered
        elif entered is not None:
            raise _Answer(entered)

    # DRF accepts any HttpResponseBase here (finalize_response asserts just
    # that); its stubs say Response. A replay is a plain HttpResponse.

    def handle_exception(self, exc: Exception) -> HttpResponseBase:  # type: ignore[override]
        if isinstance(exc, _Answer):
            return exc.response
        try:
            response = super().handle_exception(exc)
        except BaseException:
            exchange, self._idempotency_exchange = self._idempotency_exchange, None
            if exchange is not None:
                exchange.abort("exception", exc)
            raise
        if self._idempotency_exchange is not None:
            self._idempotency_exchange.answered_exception()
        return response

    def finalize_response(  # type: ignore[override]
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[arg-type]
        exchange, self._idempotency_exchange = self._idempotency_exchange, None
        if exchange is not None:
            response = exchange.finish(response)
        return response

    def _idempotency_handled(self, request: Request) -> bool:
        """Whether the view has a handler for the method (else DRF answers
        405 and there is nothing to protect)."""
        method = (request.method or "").lower()
        return method in self.http_method_names and hasattr(self, method)


def view_protection(view: IdempotencyMixin, request: Request | None = None) -> Idempotency:
    """The protection of ``view``'s current request: the view's own, or,
    when its class overrides ``get_idempotency_options()``, that one's
    options over it (``request``: read the body into memory first, since
    they may parse it)."""
    own = view._idempotency_protection
    if type(view).get_idempotency_options is IdempotencyMixin.get_idempotency_options:
        return own
    if request is not None:
        # The options may read request.data, which consumes the stream:
        # keep the body's bytes for the fingerprint first.
        _keep_body(request)
    options = view.get_idempotency_options()
    if not options:
        return own
    return _per_request(own, options, type(view))


def _attributes(cls: type) -> dict[str, Any]:
    """The ``idempotency_*`` options set on ``cls``, read from the class,
    never through an instance: a function given as an option is not turned
    into a method of the view."""
    options = {}
    for name in conf.PER_VIEW_OPTIONS:
        value = getattr(cls, ATTRIBUTE_PREFIX + name, UNSET)
        if value is not UNSET:
            options[name] = value
    return options


def _label(cls: type, prefix: str = ATTRIBUTE_PREFIX) -> conf.Label:
    """How the view class ``cls`` spells an option in error messages:
    ``OrderViewSet.idempotency_ttl``."""
    return lambda name: f"{cls.__qualname__}.{prefix}{name}"


def _options_label(cls: type) -> conf.Label:
    """How options returned by ``get_idempotency_options()`` are named."""
    return lambda name: f"{cls.__qualname__}.get_idempotency_options()[{name!r}]"


def _keep_body(request: Request) -> None:
    """Read the request's body into memory, where the fingerprint finds it
    after a parser has read the stream; a multipart form is fingerprinted
    from its parsed parts instead, and streamed to disk as DRF parses it."""
    if not is_multipart(request):
        request.body  # noqa: B018


# -- one Idempotency per distinct set of per-request options ----------------------------


def _per_request(own: Idempotency, options: Mapping[str, Any], view_class: type) -> Idempotency:
    """``options`` over the view's ``own`` protection, parsed once and shared
    by every request with the same options (a bounded cache: options decided
    per request may be new objects each time)."""
    try:
        # With each value's type: 1 == True and hash(1) == hash(True), but
        # they are not the same option value.
        frozen = tuple(
            sorted((name, type(value), _hashable(value)) for name, value in options.items())
        )
        hash(frozen)
    except TypeError:
        return _merged(own, options, view_class)
    return _cached_per_request(own, frozen, view_class)


@functools.lru_cache(maxsize=256)
def _cached_per_request(
    own: Idempotency, frozen: tuple[tuple[str, type, Hashable], ...], view_class: type
) -> Idempotency:
    return _merged(own, {name: value for name, _, value in frozen}, view_class)


def _merged(own: Idempotency, options: Mapping[str, Any], view_class: type) -> Idempotency:
    merged = dict(own.overrides)
    for name, value in options.items():
        if value is UNSET:
            merged.pop(name, None)
        else:
            merged[name] = value
    return Idempotency(merged, label=_options_label(view_class))


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, set):
        return frozenset(value)
    return value
