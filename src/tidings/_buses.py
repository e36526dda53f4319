"""The command, event and query buses, and the dispatch path behind them.

Sync handlers run inline and their exceptions reach the caller. Each asynchronous subscriber gets its
own copy of the message, addressed to exactly that endpoint. Messages sent while a bus call or a
handling is in progress are collected and sent only once it succeeded, so a failure sends nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, final

from uuid_utils import uuid7

from tidings import headers as h
from tidings._context import MessageContext, handling_scope
from tidings._message import Envelope, message_name
from tidings._serialization import encode
from tidings.exceptions import ConfigurationError, HandlerNotFound, SerializationError
from tidings.middleware.base import Outgoing, SendNext

if TYPE_CHECKING:
    from tidings._app import App
    from tidings._decorators import DelaySpec, HandlerKind
    from tidings._registry import Endpoint

__all__ = ["CommandBus", "EventBus", "QueryBus"]

_FRAMEWORK: Final = h.FRAMEWORK_PREFIX
_NOT_PROPAGATED: Final = h.NOT_PROPAGATED
_MESSAGE_ID: Final = h.MESSAGE_ID
_CORRELATION_ID: Final = h.CORRELATION_ID
_TIMESTAMP: Final = h.TIMESTAMP
_MESSAGE_NAME: Final = h.MESSAGE_NAME

Observer = Callable[["HandlerKind", Any, Mapping[str, str]], None]


class SendOptions:
    """Per-message delivery options given to a bus call; None means the handler's own setting."""

    __slots__ = ("delay", "priority", "time_to_live")

    def __init__(self, delay: DelaySpec | None, priority: int | None, time_to_live: timedelta | None) -> None:
        self.delay = delay
        self.priority = priority
        self.time_to_live = time_to_live


_NO_OPTIONS: Final = SendOptions(None, None, None)


def _deliver_at(delay: DelaySpec, message: Any, headers: Mapping[str, str], now: float) -> float:
    if callable(delay) and not isinstance(delay, timedelta | datetime):
        delay = delay(message, headers)
    if isinstance(delay, timedelta):
        return now + delay.total_seconds()
    if isinstance(delay, datetime):
        if delay.tzinfo is None:
            raise ConfigurationError(
                f"a delivery time must be timezone-aware (e.g. datetime.now(UTC) + ...), got {delay}"
            )
        return delay.timestamp()
    raise ConfigurationError(f"a delay must be a timedelta or a datetime, got {delay!r}")


@final
class Dispatcher:
    """Routes bus calls to endpoints; one per app."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.observers: list[Observer] = []
        self._send_chain: SendNext = self._collect
        self._now = app.clock.now
        self._by_class: dict[HandlerKind, dict[type[Any], tuple[str, tuple[Endpoint, ...]]]] = {
            "command": {},
            "event": {},
            "query": {},
        }
        self._commands_by_class = self._by_class["command"]

    def use_send_middleware(self, chain: SendNext) -> None:
        self._send_chain = chain

    # -- headers ----------------------------------------------------------------------------------

    def new_headers(self, name: str, explicit: Mapping[str, str] | None) -> dict[str, str]:
        """Headers for a new message: propagated from the one being handled, then the explicit ones."""
        parent = handling_scope.get()[0]
        if parent is None and not explicit:
            message_id = str(uuid7())
            return {
                _MESSAGE_ID: message_id,
                _CORRELATION_ID: message_id,
                _TIMESTAMP: repr(self._now()),
                _MESSAGE_NAME: name,
            }
        if parent is None:
            headers = dict(explicit) if explicit else {}
            message_id = headers.get(h.MESSAGE_ID) or str(uuid7())
            headers[h.MESSAGE_ID] = message_id
            if h.CORRELATION_ID not in headers:
                headers[h.CORRELATION_ID] = message_id
        else:
            inherited = parent.headers
            headers = {
                key: value
                for key, value in inherited.items()
                if not key.startswith(_FRAMEWORK) and key not in _NOT_PROPAGATED
            }
            if explicit:
                headers.update(explicit)
            if h.MESSAGE_ID not in headers:
                headers[h.MESSAGE_ID] = str(uuid7())
            parent_id = inherited.get(h.MESSAGE_ID, "")
            headers[h.CORRELATION_ID] = inherited.get(h.CORRELATION_ID, parent_id)
            headers[h.CAUSATION_ID] = parent_id
        headers[h.TIMESTAMP] = repr(self._now())
        headers[h.MESSAGE_NAME] = name
        return headers

    # -- bus calls --------------------------------------------------------------------------------

    def _route(self, kind: HandlerKind, message: Any, name: str | None) -> tuple[str, tuple[Endpoint, ...]]:
        if name is not None:
            return name, self.app.routes.by_name(kind, name)
        cls = type(message)
        known = self._by_class[kind].get(cls)
        if known is None:
            if isinstance(message, Mapping):
                raise ConfigurationError(
                    f'a {kind} given as a plain mapping needs a name to be routed: pass name="..."'
                )
            known = message_name(cls), self.app.routes.by_class(kind, cls)
            self._by_class[kind][cls] = known
        return known

    async def command(
        self,
        message: Any,
        headers: Mapping[str, str] | None,
        name: str | None,
        options: SendOptions,
    ) -> Any:
        known = self._commands_by_class.get(type(message)) if name is None else None
        wire_name, endpoints = known or self._route("command", message, name)
        if not endpoints:
            raise HandlerNotFound(
                f"no handler for command {wire_name} ({type(message).__qualname__}); decorate a "
                f"function with @command_handler taking it, and pass it in App(handlers=[...])"
            )
        message_headers = self.new_headers(wire_name, headers)
        for observe in self.observers:
            observe("command", message, message_headers)
        endpoint = endpoints[0]
        if endpoint.channels:
            body = self._encode(message, message_headers)
            await self.enqueue(endpoint, body, message_headers, message, options)
            return None
        return await self._collecting(self.invoke, endpoint, message, message_headers)

    async def event(
        self,
        message: Any,
        headers: Mapping[str, str] | None,
        name: str | None,
        options: SendOptions,
    ) -> None:
        wire_name, endpoints = self._route("event", message, name)
        message_headers = self.new_headers(wire_name, headers)
        for observe in self.observers:
            observe("event", message, message_headers)
        if len(endpoints) == 1 and endpoints[0].channels:
            # One copy and nothing inline that could fail first: send it straight away.
            body = self._encode(message, message_headers)
            await self.enqueue(endpoints[0], body, message_headers, message, options)
        elif endpoints:
            await self._collecting(self._publish, endpoints, message, message_headers, options)

    async def query(self, message: Any, headers: Mapping[str, str] | None, name: str | None) -> Any:
        wire_name, endpoints = self._route("query", message, name)
        if not endpoints:
            raise HandlerNotFound(
                f"no handler for query {wire_name} ({type(message).__qualname__}); decorate a "
                f"function with @query_handler taking it, and pass it in App(handlers=[...])"
            )
        message_headers = self.new_headers(wire_name, headers)
        for observe in self.observers:
            observe("query", message, message_headers)
        return await self.invoke(endpoints[0], message, message_headers)

    async def _collecting(self, deliver: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        parent, outer = handling_scope.get()
        if outer is not None:
            return await deliver(*args)
        pending: list[Outgoing] = []
        token = handling_scope.set((parent, pending))
        try:
            result = await deliver(*args)
        finally:
            handling_scope.reset(token)
        if pending:
            await self.flush(pending)
        return result

    async def _publish(
        self,
        endpoints: tuple[Endpoint, ...],
        message: Any,
        headers: dict[str, str],
        options: SendOptions,
    ) -> None:
        body: bytes | None = None
        for endpoint in endpoints:
            if endpoint.channels:
                if body is None:
                    body = self._encode(message, headers)
                await self.enqueue(endpoint, body, headers, message, options)
            else:
                await self.invoke(endpoint, message, headers)

    @staticmethod
    def _encode(message: Any, headers: Mapping[str, str]) -> bytes:
        try:
            return encode(message)
        except (TypeError, ValueError) as error:
            raise SerializationError(
                f"message {headers.get(h.MESSAGE_NAME)} could not be encoded as JSON: {error}. "
                f"Use a dataclass, a pydantic model, a msgspec Struct or a dict of JSON values."
            ) from error

    # -- inline handling --------------------------------------------------------------------------

    async def invoke(self, endpoint: Endpoint, message: Any, headers: dict[str, str]) -> Any:
        classes = endpoint.message_classes
        if (classes and not isinstance(message, classes)) or (
            endpoint.takes_mapping and not isinstance(message, Mapping)
        ):
            # Routed by name with a payload of another shape: convert through the wire format.
            message = endpoint.decode(self._encode(message, headers), headers.get(h.MESSAGE_NAME))
        context = MessageContext(self.app, endpoint, headers, message)
        token = handling_scope.set((context, handling_scope.get()[1]))
        try:
            if endpoint.bare:
                return await endpoint.function(message)
            assert endpoint.pipeline is not None
            return await endpoint.pipeline(context)
        finally:
            handling_scope.reset(token)

    def call_handler(self, endpoint: Endpoint) -> Callable[[MessageContext], Awaitable[Any]]:
        """The innermost step of an endpoint's pipeline: call the function with its arguments."""
        function = endpoint.function
        providers = endpoint.parameters
        app = self.app
        if endpoint.is_coroutine:
            # Plain functions handing back the handler's own coroutine: no frame of ours around it.
            if not providers:

                def call_plain(context: MessageContext) -> Awaitable[Any]:
                    return function(context.message)  # type: ignore[no-any-return]

                return call_plain

            def call(context: MessageContext) -> Awaitable[Any]:
                return function(context.message, *[p(context) for p in providers])  # type: ignore[no-any-return]

            return call

        async def call_in_thread(context: MessageContext) -> Any:
            arguments = [context.message, *[p(context) for p in providers]]
            run = contextvars.copy_context().run
            return await asyncio.get_running_loop().run_in_executor(app.executor, run, function, *arguments)

        return call_in_thread

    # -- sending ----------------------------------------------------------------------------------

    async def enqueue(
        self,
        endpoint: Endpoint,
        body: bytes,
        headers: dict[str, str],
        message: Any,
        options: SendOptions,
    ) -> None:
        """Address a copy to `endpoint` and send it to the first channel of its chain."""
        wire = {**headers, **endpoint.wire_headers}
        delay = options.delay if options.delay is not None else endpoint.delay
        priority = options.priority if options.priority is not None else endpoint.priority
        ttl = options.time_to_live or endpoint.time_to_live
        if delay is not None or ttl is not None:
            now = self.app.clock.now()
            if delay is not None:
                wire[h.DELIVER_AT] = f"{_deliver_at(delay, message, headers, now):.6f}"
            if ttl is not None:
                wire[h.EXPIRES_AT] = f"{now + ttl.total_seconds():.6f}"
        if priority is not None:
            wire[h.PRIORITY] = str(priority)
        assert endpoint.first_channel is not None
        await self._send_chain(Outgoing(endpoint.first_channel, Envelope(body, wire), message))

    async def _collect(self, outgoing: Outgoing) -> None:
        pending = handling_scope.get()[1]
        if pending is None:
            await outgoing.channel.send([outgoing.envelope])
        else:
            pending.append(outgoing)

    async def flush(self, pending: list[Outgoing]) -> None:
        """Send collected messages, one batch per channel, in the order they were sent."""
        if len(pending) == 1:
            await pending[0].channel.send([pending[0].envelope])
            return
        batches: dict[int, tuple[Any, list[Envelope]]] = {}
        for outgoing in pending:
            batch = batches.setdefault(id(outgoing.channel), (outgoing.channel, []))
            batch[1].append(outgoing.envelope)
        await asyncio.gather(*(channel.send(envelopes) for channel, envelopes in batches.values()))


class _Bus:
    __slots__ = ("_dispatcher",)

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher


@final
class CommandBus(_Bus):
    """Sends commands; inject it into handlers by annotating a parameter with `CommandBus`."""

    def send(
        self,
        command: Any,
        *,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
        delay: DelaySpec | None = None,
        priority: int | None = None,
        time_to_live: timedelta | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Send a command to its one handler and return what it returned (None if asynchronous).

        Raises `HandlerNotFound` if nothing handles it, and whatever a synchronous handler raised.
        """
        options = (
            _NO_OPTIONS
            if delay is None and priority is None and time_to_live is None
            else SendOptions(delay, priority, time_to_live)
        )
        return self._dispatcher.command(command, headers, name, options)


@final
class EventBus(_Bus):
    """Publishes events; inject it into handlers by annotating a parameter with `EventBus`."""

    def publish(
        self,
        event: Any,
        *,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
        delay: DelaySpec | None = None,
        priority: int | None = None,
        time_to_live: timedelta | None = None,
    ) -> Coroutine[Any, Any, None]:
        """Publish an event to every subscriber: sync ones run now, asynchronous ones get a copy each.

        An event with no subscribers is fine. A synchronous subscriber's exception reaches the caller
        and no copy is sent.
        """
        options = (
            _NO_OPTIONS
            if delay is None and priority is None and time_to_live is None
            else SendOptions(delay, priority, time_to_live)
        )
        return self._dispatcher.event(event, headers, name, options)


@final
class QueryBus(_Bus):
    """Asks queries; inject it into handlers by annotating a parameter with `QueryBus`."""

    def ask(
        self, query: Any, *, headers: Mapping[str, str] | None = None, name: str | None = None
    ) -> Coroutine[Any, Any, Any]:
        """Return the answer of the query's one handler. Raises `HandlerNotFound` if none."""
        return self._dispatcher.query(query, headers, name)
