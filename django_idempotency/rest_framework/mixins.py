"""``IdempotencyMixin``: the protection of DRF API views and viewsets.

The mixin hooks DRF's own stages. ``initial()`` claims the key once DRF has
authenticated the request and checked permissions and throttles, so a
request refused there claims nothing. ``finalize_response()`` completes the
key with the response, stored once DRF rendered it; ``handle_exception()``
releases it when the view raised something DRF does not turn into a
response. Every decision is the engine's (:mod:`django_idempotency.engine`).
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
    also accepted by ``as_view()`` and ``@action(...)``, and may be decided
    per request by a method ``get_idempotency_<option>()``. Attributes left
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

    #: The exchange of the claim this request owns, from ``initial()``
    #: until the key is completed or released.
    _idempotency_exchange: Exchange | None = None

    #: Whether the options are decided per request, by methods that may read
    #: the request (set for each subclass).
    _idempotency_per_request: ClassVar[bool] = False

    # -- checked when the class is defined and when as_view() is called ---------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if APIView in mro and mro.index(APIView) < mro.index(IdempotencyMixin):
            raise TypeError(
                f"{cls.__qualname__}: list IdempotencyMixin before the DRF view class, "
                f"as in class {cls.__name__}(IdempotencyMixin, APIView); after it, "
                "DRF's stages run without the mixin's."
            )
        # A misspelt option (idempotency_tll = 60) is refused here, when the
        # class is defined, with the closest option's name, as the decorator
        # refuses a misspelt keyword.
        for name in vars(cls):
            for prefix in (ATTRIBUTE_PREFIX, GETTER_PREFIX):
                option = name.removeprefix(prefix)
                if (
                    name.startswith(prefix)
                    and option not in conf.PER_VIEW_OPTIONS
                    and name != "get_idempotency_options"
                ):
                    raise TypeError(conf.unknown_option(option, _label(cls, prefix)))
        cls._idempotency_parse(cls._idempotency_attributes(cls))
        cls._idempotency_per_request = (
            any(hasattr(cls, GETTER_PREFIX + name) for name in conf.PER_VIEW_OPTIONS)
            or cls.get_idempotency_options is not IdempotencyMixin.get_idempotency_options
            or cls.get_idempotency is not IdempotencyMixin.get_idempotency
        )

    @classmethod
    def as_view(cls, *args: Any, **initkwargs: Any) -> Any:
        cls._idempotency_parse(
            {
                name.removeprefix(ATTRIBUTE_PREFIX): value
                for name, value in initkwargs.items()
                if name.startswith(ATTRIBUTE_PREFIX)
            }
        )
        return super().as_view(*args, **initkwargs)

    @classmethod
    def _idempotency_parse(cls, options: Mapping[str, Any]) -> None:
        conf.parse_overrides(options, _label(cls))

    @staticmethod
    def _idempotency_attributes(source: object) -> dict[str, Any]:
        """The ``idempotency_*`` values of a view class or instance. They are
        read from the instance's own attributes (``as_view()`` and ``@action``
        set those) or from the class, never through the instance: a function
        given as an option is not turned into a method of the view."""
        cls = source if isinstance(source, type) else type(source)
        own = {} if isinstance(source, type) else vars(source)
        options = {}
        for name in conf.PER_VIEW_OPTIONS:
            attribute = ATTRIBUTE_PREFIX + name
            value = own[attribute] if attribute in own else getattr(cls, attribute, UNSET)
            if value is not UNSET:
                options[name] = value
        return options

    # -- per request ----------------------------------------------------------------

    def get_idempotency_options(self) -> dict[str, Any]:
        """The options of this request: each ``get_idempotency_<option>()``
        method's answer, else the ``idempotency_<option>`` attribute (set on
        the class, by ``as_view()`` or by ``@action``), unless ``UNSET``."""
        options = self._idempotency_attributes(self)
        for name in conf.PER_VIEW_OPTIONS:
            getter = getattr(self, GETTER_PREFIX + name, None)
            if getter is not None:
                value = getter()
                if value is UNSET:
                    options.pop(name, None)
                else:
                    options[name] = value
        return options

    def get_idempotency(self) -> Idempotency:
        """The protection of this request, from :meth:`get_idempotency_options`."""
        return protection(self.get_idempotency_options(), type(self))

    # -- DRF's stages ---------------------------------------------------------------

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self._idempotency_exchange = None
        idempotency = None
        if self._idempotency_handled(request):
            if self._idempotency_per_request:
                # The getters may read request.data, which consumes the
                # stream: keep the body's bytes for the fingerprint first.
                _keep_body(request)
            idempotency = self.get_idempotency()
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


def _label(cls: type | None, prefix: str = ATTRIBUTE_PREFIX) -> conf.Label:
    """How the view class ``cls`` spells an option in error messages:
    ``OrderViewSet.idempotency_ttl`` (or ``.get_idempotency_ttl``); without
    a class, as the decorator's keyword."""
    if cls is None:
        return conf.keyword_label
    return lambda name: f"{cls.__qualname__}.{prefix}{name}"


def _keep_body(request: Request) -> None:
    """Read the request's body into memory, where the fingerprint finds it
    after a parser has read the stream; a multipart form is fingerprinted
    from its parsed parts instead, and streamed to disk as DRF parses it."""
    if not is_multipart(request):
        request.body  # noqa: B018


# -- one Idempotency per distinct set of options -----------------------------------------------


def protection(options: Mapping[str, Any], view_class: type | None = None) -> Idempotency:
    """The :class:`Idempotency` for ``options``, parsed once and shared by
    every request with the same options (a bounded cache: options decided
    per request by ``get_idempotency_*()`` may be new objects each time).
    Errors name the options as attributes of ``view_class``, if given."""
    try:
        # With each value's type: 1 == True and hash(1) == hash(True), but
        # they are not the same option value.
        frozen = tuple(
            sorted((name, type(value), _hashable(value)) for name, value in options.items())
        )
        hash(frozen)
    except TypeError:
        return Idempotency(options, label=_label(view_class))
    return _cached_protection(frozen, view_class)


@functools.lru_cache(maxsize=256)
def _cached_protection(
    frozen: tuple[tuple[str, type, Hashable], ...], view_class: type | None
) -> Idempotency:
    return Idempotency({name: value for name, _, value in frozen}, label=_label(view_class))


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, set):
        return frozenset(value)
    return value
