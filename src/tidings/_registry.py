"""From decorated functions to endpoints: collection, validation, injection plans and routing.

Everything here runs once, when the app is built; the hot path only looks up dictionaries.
"""

from __future__ import annotations

import fnmatch
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, final

from tidings._decorators import DelaySpec, HandlerKind, HandlerSpec, find_spec
from tidings._message import message_name
from tidings._serialization import Decoder, decoder_for, union_members
from tidings.exceptions import ConfigurationError

if typing.TYPE_CHECKING:
    from tidings._context import MessageContext
    from tidings.channels.base import Channel
    from tidings.middleware.base import CallNext, Middleware

__all__ = [
    "Endpoint",
    "Header",
    "ParameterResolver",
    "Provider",
    "Routes",
    "collect_endpoints",
]

#: Produces one handler argument for one handling.
Provider = Callable[["MessageContext"], Any]
#: Given a parameter's annotation, returns a provider for it, or None if it does not know the type.
ParameterResolver = Callable[[Any], "Provider | None"]


@final
@dataclass(frozen=True)
class Header:
    """Inject one header: `tenant: Annotated[str, Header("tenant")]`; None (or the default) if absent."""

    name: str


@final
class Endpoint:
    """One registered handler, identified by its endpoint id."""

    def __init__(
        self,
        *,
        endpoint_id: str,
        kind: HandlerKind,
        function: Callable[..., Any],
        qualname: str,
        spec: HandlerSpec,
        message_type: Any,
        channels: tuple[str, ...],
        parameters: tuple[Provider, ...],
    ) -> None:
        self.id = endpoint_id
        self.kind = kind
        self.function = function
        self.qualname = qualname
        self.is_coroutine = inspect.iscoroutinefunction(function)
        self.message_type = message_type
        members = [m for m in union_members(message_type) if isinstance(m, type) and m is not Any]
        # TypedDicts are plain dicts at run time: routed by name, never by isinstance.
        self.message_classes: tuple[type[Any], ...] = tuple(m for m in members if not typing.is_typeddict(m))
        self._member_names = {message_name(m): m for m in members}
        self.names = spec.names
        self.channels = channels
        self.delay: DelaySpec | None = spec.delay
        self.priority: int | None = spec.priority
        self.time_to_live: timedelta | None = spec.time_to_live
        self.options: dict[str, Any] = spec.options
        self.handler_middleware: list[Middleware] = list(spec.middleware)
        self.parameters = parameters
        self.decode: Decoder = decoder_for(message_type, self._member_names)
        #: Whether the handler takes a plain mapping (routed by name, not by class).
        self.takes_mapping = not self.message_classes
        #: The middleware chain ending in the handler call; built by the app.
        self.pipeline: CallNext | None = None
        #: The channel a copy is sent to first, and the headers every copy carries; set by the app.
        self.first_channel: Channel | None = None
        #: An async function taking only the message, with no middleware: called without a pipeline.
        self.bare = False
        self.wire_headers: dict[str, str] = {}

    def __repr__(self) -> str:
        where = f" on {'→'.join(self.channels)}" if self.channels else ""
        return f"<Endpoint {self.id!r} ({self.kind} handler {self.qualname}){where}>"

    @property
    def is_asynchronous(self) -> bool:
        return bool(self.channels)

    @property
    def message_type_name(self) -> str:
        if self.message_type is Any:
            return "a plain mapping"
        if isinstance(self.message_type, type):
            return self.message_type.__qualname__
        return str(self.message_type).replace("typing.", "")

    def accepts_name(self, name: str) -> bool:
        for pattern in self.names:
            if pattern == name or ("*" in pattern and fnmatch.fnmatchcase(name, pattern)):
                return True
        return name in self._member_names


# -- collection ---------------------------------------------------------------------------------------


def _handler_functions(owner: type[Any]) -> list[tuple[str, Callable[..., Any], HandlerSpec]]:
    found = []
    for name, value in inspect.getmembers_static(owner):
        function = value.__func__ if isinstance(value, staticmethod | classmethod) else value
        spec = find_spec(function)
        if spec is not None and spec.kind is not None:
            found.append((name, function, spec))
    return found


def _construct(cls: type[Any], services: Mapping[type[Any], Any]) -> Any:
    """Build a handler class, giving its constructor the services its annotations ask for."""
    signature = inspect.signature(cls)
    hints = typing.get_type_hints(cls.__init__) if cls.__init__ is not object.__init__ else {}
    arguments = {}
    for name, parameter in signature.parameters.items():
        annotation = hints.get(name, parameter.annotation)
        service = _find_service(annotation, services)
        if service is not _MISSING:
            arguments[name] = service
        elif parameter.default is inspect.Parameter.empty:
            raise ConfigurationError(
                f"cannot construct handler class {cls.__qualname__}: its parameter '{name}' "
                f"({_describe(annotation)}) is not a registered service. Register it with "
                f"App(services={{{_describe(annotation)}: ...}}) or pass an instance instead of the class."
            )
    return cls(**arguments)


_MISSING: Any = object()


def _find_service(annotation: Any, services: Mapping[type[Any], Any]) -> Any:
    if annotation in services:
        return services[annotation]
    if isinstance(annotation, type):
        for kind, service in services.items():
            if isinstance(kind, type) and issubclass(kind, annotation):
                return service
    return _MISSING


def _describe(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "no annotation"
    return annotation.__qualname__ if isinstance(annotation, type) else str(annotation)


def _discover(
    handlers: Iterable[Any], services: Mapping[type[Any], Any]
) -> list[tuple[Callable[..., Any], Callable[..., Any], HandlerSpec, str, str]]:
    """(callable, original function, spec, qualname, default endpoint id) for every handler given."""
    found: list[tuple[Callable[..., Any], Callable[..., Any], HandlerSpec, str, str]] = []
    seen: set[tuple[int, int]] = set()

    def add_instance(instance: Any) -> None:
        cls = type(instance)
        for name, function, spec in _handler_functions(cls):
            key = (id(function), id(instance))
            if key not in seen:
                seen.add(key)
                bound = getattr(instance, name)
                qualname = f"{cls.__qualname__}.{name}"
                found.append((bound, function, spec, qualname, qualname))

    def add_function(function: Callable[..., Any]) -> None:
        spec = find_spec(function)
        if spec is not None and spec.kind is None and "schedule" in spec.options:
            return  # a schedule, collected by tidings._schedules
        if spec is None or spec.kind is None:
            raise ConfigurationError(
                f"{getattr(function, '__qualname__', function)!r} is not a handler: decorate it with "
                f"@command_handler, @event_handler or @query_handler"
            )
        if (id(function), 0) not in seen:
            seen.add((id(function), 0))
            found.append((function, function, spec, function.__qualname__, function.__name__))

    for item in handlers:
        if isinstance(item, types.ModuleType):
            for value in vars(item).values():
                if getattr(value, "__module__", None) != item.__name__:
                    continue
                if inspect.isclass(value):
                    if _handler_functions(value):
                        add_instance(_construct(value, services))
                elif callable(value) and (spec := find_spec(value)) and spec.kind is not None:
                    add_function(value)
        elif inspect.isclass(item):
            if not _handler_functions(item):
                raise ConfigurationError(f"class {item.__qualname__} has no decorated handler methods")
            add_instance(_construct(item, services))
        elif inspect.isfunction(item) or inspect.ismethod(item):
            add_function(item)
        elif _handler_functions(type(item)):
            add_instance(item)
        else:
            raise ConfigurationError(
                f"App(handlers=...) takes modules, classes, instances and functions with decorated "
                f"handlers; {item!r} has none"
            )
    return found


# -- injection ----------------------------------------------------------------------------------------


def _header_provider(name: str, default: Any) -> Provider:
    return lambda context: context.headers.get(name, default)


def _plan_parameter(
    owner: str,
    name: str,
    parameter: inspect.Parameter,
    annotation: Any,
    resolvers: Iterable[ParameterResolver],
    services: Mapping[type[Any], Any],
) -> Provider:
    if typing.get_origin(annotation) is Annotated:
        for extra in annotation.__metadata__:
            if isinstance(extra, Header):
                default = None if parameter.default is inspect.Parameter.empty else parameter.default
                return _header_provider(extra.name, default)
        annotation = annotation.__origin__
    for resolve in resolvers:
        provider = resolve(annotation)
        if provider is not None:
            return provider
    service = _find_service(annotation, services)
    if service is not _MISSING:
        return lambda _context: service
    if parameter.default is not inspect.Parameter.empty:
        default = parameter.default
        return lambda _context: default
    raise ConfigurationError(
        f"handler {owner} asks for parameter '{name}' ({_describe(annotation)}), which tidings cannot "
        f"provide. Annotate it with CommandBus, EventBus, QueryBus, Headers, MessageContext, "
        f"Annotated[str, Header('name')], or register a service with "
        f"App(services={{{_describe(annotation)}: ...}})."
    )


def _plan(
    function: Callable[..., Any],
    qualname: str,
    spec: HandlerSpec,
    resolvers: Iterable[ParameterResolver],
    services: Mapping[type[Any], Any],
) -> tuple[Any, tuple[Provider, ...]]:
    """The message type and a provider per remaining parameter."""
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except NameError as error:
        raise ConfigurationError(
            f"handler {qualname} has an annotation that cannot be resolved ({error}); import the type "
            f"at module level"
        ) from error
    parameters = list(signature.parameters.items())
    if not parameters:
        raise ConfigurationError(
            f"handler {qualname} has no parameter for the message; its first parameter receives it, "
            f"annotated with the message class (or given a name in the decorator)"
        )
    message_parameter = parameters[0][0]
    message_type = hints.get(message_parameter, Any)
    if message_type is Any and not spec.names:
        raise ConfigurationError(
            f"handler {qualname} does not say which message it handles: annotate its first parameter "
            f"'{message_parameter}' with the message class, or give a name, e.g. "
            f'@{spec.kind}_handler("order.placed")'
        )
    if message_type in (dict, Mapping, typing.Any) or typing.get_origin(message_type) in (dict,):
        message_type = Any
    providers = tuple(
        _plan_parameter(qualname, name, parameter, hints.get(name, parameter.annotation), resolvers, services)
        for name, parameter in parameters[1:]
    )
    return message_type, providers


def collect_endpoints(
    handlers: Iterable[Any],
    *,
    services: Mapping[type[Any], Any],
    resolvers: Iterable[ParameterResolver],
    channel_chains: Mapping[str, tuple[str, ...]],
) -> list[Endpoint]:
    """Collect and validate every endpoint; errors name the handler and say what to do."""
    resolvers = list(resolvers)
    endpoints: list[Endpoint] = []
    by_id: dict[str, Endpoint] = {}
    for function, _original, spec, qualname, default_id in _discover(handlers, services):
        assert spec.kind is not None
        endpoint_id = spec.endpoint_id or default_id
        message_type, providers = _plan(function, qualname, spec, resolvers, services)
        channels: tuple[str, ...] = ()
        for name in spec.channels:
            if name not in channel_chains:
                known = ", ".join(sorted(channel_chains)) or "none"
                raise ConfigurationError(
                    f"handler {qualname} is @asynchronous on channel '{name}', which the app does "
                    f"not declare (declared: {known}). Add it to App(channels=[...])."
                )
            channels += channel_chains[name]
        if channels and spec.kind == "query":
            raise ConfigurationError(
                f"query handler {qualname} cannot be @asynchronous: queries are answered inline. "
                f"Make it a command handler, or remove @asynchronous."
            )
        if not channels and (spec.delay or spec.priority is not None or spec.time_to_live):
            raise ConfigurationError(
                f"handler {qualname} has @delayed, @priority or @time_to_live but is not "
                f"@asynchronous; those apply to messages waiting in a channel"
            )
        endpoint = Endpoint(
            endpoint_id=endpoint_id,
            kind=spec.kind,
            function=function,
            qualname=qualname,
            spec=spec,
            message_type=message_type,
            channels=channels,
            parameters=providers,
        )
        if endpoint_id in by_id:
            raise ConfigurationError(
                f"endpoint id '{endpoint_id}' is used by both {by_id[endpoint_id].qualname} and "
                f"{qualname}; give one of them another id, e.g. "
                f'@{spec.kind}_handler(endpoint_id="...")'
            )
        by_id[endpoint_id] = endpoint
        endpoints.append(endpoint)
    _check_single_handlers(endpoints)
    return endpoints


def _check_single_handlers(endpoints: list[Endpoint]) -> None:
    for kind in ("command", "query"):
        owners: dict[Any, Endpoint] = {}
        for endpoint in endpoints:
            if endpoint.kind != kind:
                continue
            for key in (*endpoint.message_classes, *endpoint.names):
                other = owners.setdefault(key, endpoint)
                if other is not endpoint:
                    shown = key.__qualname__ if isinstance(key, type) else repr(key)
                    raise ConfigurationError(
                        f"{kind} {shown} has two handlers, {other.qualname} and "
                        f"{endpoint.qualname}; a {kind} has exactly one. Make one of them an "
                        f"event handler or remove it."
                    )


# -- routing ------------------------------------------------------------------------------------------


@final
class Routes:
    """Which endpoints a message goes to; answers are cached per message class or name."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._endpoints = list(endpoints)
        self._cache: dict[tuple[str, Any], tuple[Endpoint, ...]] = {}

    def by_class(self, kind: HandlerKind, cls: type[Any]) -> tuple[Endpoint, ...]:
        key = (kind, cls)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._match_class(kind, cls)
        return found

    def by_name(self, kind: HandlerKind, name: str) -> tuple[Endpoint, ...]:
        key = (kind, name)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = tuple(
                e for e in self._endpoints if e.kind == kind and e.accepts_name(name)
            )
        return found

    def _match_class(self, kind: HandlerKind, cls: type[Any]) -> tuple[Endpoint, ...]:
        name = message_name(cls)
        candidates = [e for e in self._endpoints if e.kind == kind]
        if kind == "event":
            return tuple(
                e for e in candidates if issubclass_any(cls, e.message_classes) or e.accepts_name(name)
            )
        # A command or query goes to the handler of its most specific class.
        for ancestor in cls.__mro__:
            for endpoint in candidates:
                if ancestor in endpoint.message_classes:
                    return (endpoint,)
        return tuple(e for e in candidates if e.accepts_name(name))[:1]


def issubclass_any(cls: type[Any], bases: tuple[type[Any], ...]) -> bool:
    return any(issubclass(cls, base) for base in bases)
