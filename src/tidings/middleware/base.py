"""Middleware: one ordered pipeline around handling and around sending."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidings._context import MessageContext
    from tidings._message import Envelope
    from tidings._registry import Endpoint
    from tidings.channels.base import Channel

__all__ = ["CallNext", "Middleware", "Outgoing", "SendNext", "scoped"]

CallNext = Callable[["MessageContext"], Awaitable[Any]]


class Outgoing:
    """A message on its way to a channel, as sending middleware see it."""

    __slots__ = ("channel", "envelope", "payload")

    def __init__(self, channel: Channel, envelope: Envelope, payload: Any) -> None:
        self.channel = channel
        self.envelope = envelope
        self.payload = payload

    def __repr__(self) -> str:
        return f"Outgoing({self.channel.name!r}, {self.envelope!r})"


SendNext = Callable[[Outgoing], Awaitable[None]]


class Middleware:
    """Runs around handlers (and optionally around sends). Subclass and override what you need.

    - `before(context)` runs before the handler, `after(context, result)` after it returned;
    - `handle(context, call_next)` wraps the handler completely (the default calls before, the rest of
      the pipeline, then after);
    - `send(outgoing, call_next)` wraps every message sent to a channel;
    - `wrap(endpoint, call_next)` builds the step for one endpoint (the default calls `handle`).

    `order` places built-in and user middleware: lower runs further out. `applies_to(endpoint)` selects
    the endpoints a middleware wraps; it is asked once per endpoint at start-up.
    """

    #: Lower runs further out. Built-ins: handler timeout -30, transactions -10, deduplication -5;
    #: user middleware default to 0 (innermost). Retries and the dead letter are not middleware:
    #: the consumer's failure policy runs them once a failed handling has unwound.
    order: int = 0

    def applies_to(self, endpoint: Endpoint) -> bool:
        return True

    async def before(self, context: MessageContext) -> None:
        """Called before the handler runs."""

    async def after(self, context: MessageContext, result: Any) -> None:
        """Called after the handler returned `result`."""

    async def handle(self, context: MessageContext, call_next: CallNext) -> Any:
        await self.before(context)
        result = await call_next(context)
        await self.after(context, result)
        return result

    async def send(self, outgoing: Outgoing, call_next: SendNext) -> None:
        await call_next(outgoing)

    def wrap(self, endpoint: Endpoint, call_next: CallNext) -> CallNext:
        """This middleware around `call_next`, for one endpoint; asked once per endpoint at start-up.

        The default calls `handle`. A middleware may return a step made for the endpoint instead, with
        what it would otherwise look up for every message already worked out.
        """
        return lambda context: self.handle(context, call_next)


def _overrides(middleware: Middleware, *names: str) -> bool:
    return any(getattr(type(middleware), name) is not getattr(Middleware, name) for name in names)


def wraps_handling(middleware: Middleware) -> bool:
    return _overrides(middleware, "before", "after", "handle", "wrap")


def wraps_sending(middleware: Middleware) -> bool:
    return _overrides(middleware, "send")


class _Scoped(Middleware):
    def __init__(self, inner: Middleware, select: Callable[[Endpoint], bool]) -> None:
        self.inner = inner
        self.select = select
        self.order = inner.order

    def applies_to(self, endpoint: Endpoint) -> bool:
        return self.select(endpoint) and self.inner.applies_to(endpoint)

    async def handle(self, context: MessageContext, call_next: CallNext) -> Any:
        return await self.inner.handle(context, call_next)

    async def send(self, outgoing: Outgoing, call_next: SendNext) -> None:
        await self.inner.send(outgoing, call_next)

    def wrap(self, endpoint: Endpoint, call_next: CallNext) -> CallNext:
        return self.inner.wrap(endpoint, call_next)


def scoped(
    middleware: Middleware,
    *,
    endpoints: set[str] | None = None,
    channels: set[str] | None = None,
    where: Callable[[Endpoint], bool] | None = None,
) -> Middleware:
    """Apply `middleware` only to some endpoints: by id, by channel, or by a predicate."""

    def select(endpoint: Endpoint) -> bool:
        if endpoints is not None and endpoint.id not in endpoints:
            return False
        if channels is not None and not channels.intersection(endpoint.channels):
            return False
        return where is None or where(endpoint)

    return _Scoped(middleware, select)
