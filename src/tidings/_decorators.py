"""Decorators that only annotate: they attach a `HandlerSpec` and return the function unchanged.

Their order does not matter, and removing `@asynchronous` makes a handler synchronous again.
`App(handlers=[...])` reads the specs; nothing is registered globally.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

if TYPE_CHECKING:
    from tidings._message import Headers
    from tidings.middleware.base import Middleware

__all__ = [
    "DelaySpec",
    "HandlerKind",
    "HandlerSpec",
    "asynchronous",
    "command_handler",
    "delayed",
    "event_handler",
    "priority",
    "query_handler",
    "spec_of",
    "time_to_live",
    "with_middleware",
]

F = TypeVar("F", bound=Callable[..., Any])
HandlerKind = Literal["command", "event", "query"]
#: A fixed delay, a point in time, or a function of the message and its headers returning either.
DelaySpec = timedelta | datetime | Callable[[Any, "Headers"], "timedelta | datetime"]

_SPEC_ATTRIBUTE = "__tidings_handler__"


@dataclass
class HandlerSpec:
    """Everything the decorators said about one handler function."""

    kind: HandlerKind | None = None
    names: tuple[str, ...] = ()
    endpoint_id: str | None = None
    channels: tuple[str, ...] = ()
    delay: DelaySpec | None = None
    priority: int | None = None
    time_to_live: timedelta | None = None
    middleware: list[Middleware] = field(default_factory=list)
    #: Options that extensions (retries, deduplication, ...) attach and read back by key.
    options: dict[str, Any] = field(default_factory=dict)


def spec_of(function: Callable[..., Any]) -> HandlerSpec:
    """The spec attached to `function`, attached fresh if there is none yet."""
    spec: HandlerSpec | None = function.__dict__.get(_SPEC_ATTRIBUTE)
    if spec is None:
        spec = HandlerSpec()
        setattr(function, _SPEC_ATTRIBUTE, spec)
    return spec


def find_spec(function: Any) -> HandlerSpec | None:
    """The spec of a decorated handler, or None for anything else."""
    attributes = getattr(function, "__dict__", None)
    return None if attributes is None else attributes.get(_SPEC_ATTRIBUTE)


def _mark_handler(
    kind: HandlerKind,
    target: Callable[..., Any] | str | None,
    names: tuple[str, ...],
    endpoint_id: str | None,
) -> Any:
    def mark(function: F) -> F:
        spec = spec_of(function)
        if spec.kind is not None and spec.kind != kind:
            raise TypeError(
                f"{function.__qualname__} is already a {spec.kind} handler; "
                f"one function handles one kind of message"
            )
        spec.kind = kind
        spec.names = tuple(dict.fromkeys((*spec.names, *names)))
        if endpoint_id is not None:
            spec.endpoint_id = endpoint_id
        return function

    if callable(target):
        return mark(target)
    if isinstance(target, str):
        names = (target, *names)
    return mark


@overload
def command_handler(function: F, /) -> F: ...
@overload
def command_handler(name: str | None = None, /, *, endpoint_id: str | None = None) -> Callable[[F], F]: ...
def command_handler(
    target: Callable[..., Any] | str | None = None, /, *, endpoint_id: str | None = None
) -> Any:
    """Mark a function or method as the handler of a command.

    The command type is the first parameter's annotation (a class, a base class or a union); a name
    given here routes commands sent by that name. A command has exactly one handler, whose return
    value `commands.send(...)` returns.
    """
    return _mark_handler("command", target, (), endpoint_id)


@overload
def event_handler(function: F, /) -> F: ...
@overload
def event_handler(*names: str, endpoint_id: str | None = None) -> Callable[[F], F]: ...
def event_handler(*targets: Any, endpoint_id: str | None = None) -> Any:
    """Mark a function or method as a subscriber of an event.

    An event has any number of subscribers; each asynchronous one gets its own copy. Names may use
    `*` wildcards (`"order.*"`).
    """
    if len(targets) == 1 and callable(targets[0]):
        return _mark_handler("event", targets[0], (), endpoint_id)
    return _mark_handler("event", None, tuple(targets), endpoint_id)


@overload
def query_handler(function: F, /) -> F: ...
@overload
def query_handler(name: str | None = None, /, *, endpoint_id: str | None = None) -> Callable[[F], F]: ...
def query_handler(
    target: Callable[..., Any] | str | None = None, /, *, endpoint_id: str | None = None
) -> Any:
    """Mark a function or method as the handler of a query; queries are always answered inline."""
    return _mark_handler("query", target, (), endpoint_id)


def asynchronous(channel: str | Sequence[str]) -> Callable[[F], F]:
    """Run the handler from a channel instead of inline.

    A list of channels is a chain: the message is written to the first (e.g. an SQL outbox in the
    sender's transaction) and relayed through the others; the handler runs when it is consumed from
    the last.
    """
    channels = (channel,) if isinstance(channel, str) else tuple(channel)
    if not channels or not all(isinstance(name, str) and name for name in channels):
        raise ValueError(f"asynchronous() takes a channel name or a list of them, got {channel!r}")

    def mark(function: F) -> F:
        spec_of(function).channels = channels
        return function

    return mark


def delayed(delay: DelaySpec) -> Callable[[F], F]:
    """Deliver this handler's copy later: after a `timedelta`, at a `datetime`, or as computed."""
    if isinstance(delay, timedelta) and delay < timedelta(0):
        raise ValueError(f"a delay cannot be negative: {delay}")
    if not isinstance(delay, timedelta | datetime) and not callable(delay):
        raise TypeError(f"delayed() takes a timedelta, a datetime or a function, got {delay!r}")

    def mark(function: F) -> F:
        spec_of(function).delay = delay
        return function

    return mark


def priority(level: int) -> Callable[[F], F]:
    """Deliver this handler's copy before lower priorities waiting on the same channel."""
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"priority() takes an int, got {level!r}")

    def mark(function: F) -> F:
        spec_of(function).priority = level
        return function

    return mark


def time_to_live(ttl: timedelta) -> Callable[[F], F]:
    """Drop this handler's copy if it is not received within `ttl` of being sent."""
    if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
        raise ValueError(f"time_to_live() takes a positive timedelta, got {ttl!r}")

    def mark(function: F) -> F:
        spec_of(function).time_to_live = ttl
        return function

    return mark


def with_middleware(*middleware: Middleware) -> Callable[[F], F]:
    """Run these middleware around this handler only, inside the app-wide ones."""

    def mark(function: F) -> F:
        spec_of(function).middleware.extend(middleware)
        return function

    return mark
