"""The app: handlers, channels, services and policies, validated once and run together."""

from __future__ import annotations

import asyncio
import collections.abc
import typing
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, final

from tidings import headers as h
from tidings._buses import CommandBus, Dispatcher, EventBus, QueryBus
from tidings._clock import Clock, SystemClock
from tidings._context import MessageContext
from tidings._registry import (
    Endpoint,
    ParameterResolver,
    Provider,
    Routes,
    collect_endpoints,
)
from tidings._schedules import InMemoryScheduleLock, ScheduleLock, collect_schedules
from tidings._serialization import JSON_CONTENT_TYPE
from tidings.channels.base import Channel, ChannelEnvironment
from tidings.dead_letter import DeadLetters, DeadLetterStore, InMemoryDeadLetterStore
from tidings.exceptions import ConfigurationError
from tidings.middleware.base import Middleware, Outgoing, SendNext, wraps_handling, wraps_sending
from tidings.middleware.deduplication import (
    DeduplicationMiddleware,
    DeduplicationStore,
    InMemoryDeduplicationStore,
)
from tidings.middleware.retries import RetryingFailurePolicy, RetryPolicy
from tidings.middleware.timeout import TimeoutMiddleware

if TYPE_CHECKING:
    from tidings._consumer import Consumer, ConsumerStats, FailurePolicy

__all__ = ["App", "CombinedChannel", "Extension"]


@final
class CombinedChannel:
    """A name for a chain of channels, e.g. an SQL outbox relayed to a broker.

    `@asynchronous("orders")` with `CombinedChannel("orders", ["outbox", "rabbit_orders"])` writes the
    message to `outbox` in the sender's transaction; a consumer of `outbox` relays it to
    `rabbit_orders`, whose consumer runs the handler.
    """

    def __init__(self, name: str, channels: Sequence[str]) -> None:
        if isinstance(channels, str) or len(channels) < 2:
            raise ValueError(f"CombinedChannel {name!r} chains two or more channel names")
        self.name = name
        self.channels = tuple(channels)

    def __repr__(self) -> str:
        return f"CombinedChannel({self.name!r}, {list(self.channels)!r})"


class Extension:
    """A part of tidings that plugs into the app (the SQL layer, for one). Hooks are optional."""

    def resolvers(self) -> Iterable[ParameterResolver]:
        return ()

    def middleware(self) -> Iterable[Middleware]:
        return ()

    async def start(self, app: App) -> None:
        """Called before channels connect."""

    async def stop(self) -> None:
        """Called after channels closed."""


def _is_headers_annotation(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin in (collections.abc.Mapping, dict) and typing.get_args(annotation) == (str, str)


@final
class App:
    """The configured system.

    `handlers` takes modules, classes (constructed with services by annotation), instances and
    functions. `channels` declares every channel asynchronous handlers use. `services` maps types to the
    objects injected into handler parameters of those types. `database` (a SQLAlchemy URL or async
    engine) is where the outbox, dead letters and deduplication records live.

    Everything is validated here, so a misconfigured app fails before it handles anything::

        app = App("shop", handlers=[handlers], channels=[InMemoryChannel("notifications")])
        async with app:
            await app.commands.send(PlaceOrder("o-1", 100))
    """

    def __init__(
        self,
        name: str,
        *,
        handlers: Iterable[Any] = (),
        channels: Iterable[Channel | CombinedChannel] = (),
        database: Any = None,
        services: Mapping[type[Any], Any] | None = None,
        middleware: Iterable[Middleware] = (),
        clock: Clock | None = None,
        max_threads: int = 32,
        parameter_resolvers: Iterable[ParameterResolver] = (),
        retry_policy: RetryPolicy | None = None,
        channel_retry_policies: Mapping[str, RetryPolicy] | None = None,
        dead_letter_store: DeadLetterStore | None = None,
        expired_messages: Literal["drop", "dead-letter"] = "drop",
        deduplicate: bool = True,
        deduplication_store: DeduplicationStore | None = None,
        deduplication_retention: timedelta = timedelta(days=7),
    ) -> None:
        handlers, channels, middleware = list(handlers), list(channels), list(middleware)
        parameter_resolvers = list(parameter_resolvers)
        # Everything but the name, to rebuild the app with changes (see `replace`).
        self._config: dict[str, Any] = {
            key: value for key, value in locals().items() if key not in ("self", "name")
        }
        self.name = name
        self.clock: Clock = clock or SystemClock()
        self.database = database
        self.services: dict[type[Any], Any] = dict(services or {})
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None
        if expired_messages not in ("drop", "dead-letter"):
            raise ConfigurationError(f"expired_messages is 'drop' or 'dead-letter', not {expired_messages!r}")
        self.expired_messages = expired_messages
        #: The dead-letter store given, else (when the app starts) the database's, else in memory.
        self.dead_letters = DeadLetters(self, dead_letter_store or InMemoryDeadLetterStore())
        self.dead_letter_store_given = dead_letter_store is not None
        #: The deduplication store given, else (when the app starts) the database's, else in memory.
        self.deduplication_store: DeduplicationStore = deduplication_store or InMemoryDeduplicationStore()
        self.deduplication_store_given = deduplication_store is not None
        self._channels, self._chains = self._declare_channels(channels)
        self.extensions: list[Extension] = []
        self.extension_state: dict[str, Any] = {}
        if database is not None:
            from tidings.sql._integration import SqlExtension

            self.extensions.append(SqlExtension(self, database))

        self.dispatcher = Dispatcher(self)
        self.commands = CommandBus(self.dispatcher)
        self.events = EventBus(self.dispatcher)
        self.queries = QueryBus(self.dispatcher)

        resolvers: list[ParameterResolver] = [self._resolve_builtin]
        for extension in self.extensions:
            resolvers.extend(extension.resolvers())
        resolvers.extend(parameter_resolvers)
        endpoints = collect_endpoints(
            handlers,
            services=self.services,
            resolvers=resolvers,
            channel_chains=self._chains,
        )
        self.endpoints: dict[str, Endpoint] = {endpoint.id: endpoint for endpoint in endpoints}
        self.schedules = collect_schedules(handlers, resolvers, self.services)
        #: Claims schedule ticks; the database's lock when the app has one (set on start).
        self.schedule_lock: ScheduleLock = InMemoryScheduleLock()
        self.routes = Routes(endpoints)
        unknown = set(channel_retry_policies or {}) - set(self._chains)
        if unknown:
            raise ConfigurationError(
                f"channel_retry_policies names channels the app does not declare: {sorted(unknown)}"
            )
        self._deduplication = DeduplicationMiddleware(
            self,
            retention=deduplication_retention,
            by_default=deduplicate,
            in_transaction=self._in_transaction,
        )
        resilience: list[Middleware] = [TimeoutMiddleware(), self._deduplication]
        #: What the consumer does with a failed handling: retries, then the dead letter.
        self.failure_policy: FailurePolicy = RetryingFailurePolicy(
            retry_policy or RetryPolicy(), channel_retry_policies or {}
        )
        self.middleware: list[Middleware] = sorted(
            resilience + [m for e in self.extensions for m in e.middleware()] + middleware,
            key=lambda m: m.order,
        )
        for endpoint in endpoints:
            self._check_capabilities(endpoint)
            if endpoint.channels:
                endpoint.first_channel = self._channels[endpoint.channels[0]]
                endpoint.wire_headers = self._wire_headers(endpoint)
            endpoint.pipeline = self._build_pipeline(endpoint)
        self.dispatcher.use_send_middleware(self._build_send_chain())
        self._started = False

    def __repr__(self) -> str:
        return f"App({self.name!r}, {len(self.endpoints)} endpoints, channels={list(self._chains)})"

    # -- building ---------------------------------------------------------------------------------

    @staticmethod
    def _declare_channels(
        declared: list[Channel | CombinedChannel],
    ) -> tuple[dict[str, Channel], dict[str, tuple[str, ...]]]:
        channels: dict[str, Channel] = {}
        chains: dict[str, tuple[str, ...]] = {}
        for item in declared:
            if item.name in chains:
                raise ConfigurationError(f"channel name '{item.name}' is declared twice")
            if isinstance(item, Channel):
                channels[item.name] = item
                chains[item.name] = (item.name,)
            elif isinstance(item, CombinedChannel):
                chains[item.name] = item.channels
            else:
                raise ConfigurationError(
                    f"App(channels=...) takes channels and CombinedChannel, got {item!r}"
                )
        for name, chain in chains.items():
            for member in chain:
                if member not in channels:
                    raise ConfigurationError(
                        f"CombinedChannel '{name}' chains '{member}', which is not a declared "
                        f"channel; declare it in App(channels=[...])"
                    )
        return channels, chains

    def _in_transaction(self) -> bool:
        if self.database is None:
            return False
        from tidings.sql._scope import in_any_transaction

        return in_any_transaction()

    def _resolve_builtin(self, annotation: Any) -> Provider | None:
        if annotation is CommandBus:
            return lambda _context: self.commands
        if annotation is EventBus:
            return lambda _context: self.events
        if annotation is QueryBus:
            return lambda _context: self.queries
        if annotation is MessageContext:
            return lambda context: context
        if _is_headers_annotation(annotation):
            return lambda context: context.headers
        return None

    def _check_capabilities(self, endpoint: Endpoint) -> None:
        if not endpoint.channels:
            return
        last = self._channels[endpoint.channels[-1]]
        first = self._channels[endpoint.channels[0]]
        if endpoint.priority is not None and not last.capabilities.priority:
            raise ConfigurationError(
                f"handler {endpoint.qualname} asks for @priority, but {last!r} cannot order by "
                f"priority; use a channel that can (SQL, Redis, RabbitMQ, in-memory) or remove it"
            )
        if endpoint.delay is not None and not first.capabilities.delay:
            raise ConfigurationError(
                f"handler {endpoint.qualname} is @delayed, but {first!r} cannot hold delayed "
                f"messages; use a channel with delay support"
            )

    @staticmethod
    def _wire_headers(endpoint: Endpoint) -> dict[str, str]:
        wire = {h.ENDPOINT: endpoint.id, h.CONTENT_TYPE: JSON_CONTENT_TYPE}
        if len(endpoint.channels) > 1:
            wire[h.ROUTING_SLIP] = ",".join(endpoint.channels[1:])
        return wire

    def _build_pipeline(self, endpoint: Endpoint) -> Any:
        chain = self.dispatcher.call_handler(endpoint)
        applicable = [m for m in self.middleware if wraps_handling(m) and m.applies_to(endpoint)]
        applicable += endpoint.handler_middleware
        endpoint.bare = endpoint.is_coroutine and not endpoint.parameters and not applicable
        for middleware in reversed(applicable):
            chain = middleware.wrap(endpoint, chain)
        return chain

    def _build_send_chain(self) -> SendNext:
        chain: SendNext = self.dispatcher._collect
        for middleware in reversed([m for m in self.middleware if wraps_sending(m)]):
            chain = _link_send(middleware, chain)
        return chain

    def replace(self, **changes: Any) -> App:
        """A new app with the same configuration but for `changes` (used by `tidings.testing`)."""
        return App(self.name, **{**self._config, **changes})

    # -- running ----------------------------------------------------------------------------------

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The bounded pool in which plain `def` handlers run."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._max_threads, thread_name_prefix=f"tidings-{self.name}"
            )
        return self._executor

    def channel(self, name: str) -> Channel:
        """The declared channel called `name`."""
        try:
            return self._channels[name]
        except KeyError:
            raise ConfigurationError(
                f"app '{self.name}' has no channel '{name}' (declared: "
                f"{', '.join(sorted(self._channels)) or 'none'})"
            ) from None

    @property
    def channels(self) -> dict[str, Channel]:
        return dict(self._channels)

    @property
    def chains(self) -> dict[str, tuple[str, ...]]:
        return dict(self._chains)

    async def start(self) -> None:
        """Connect the database and every channel. `async with app:` calls it."""
        if self._started:
            return
        environment = ChannelEnvironment(
            app_name=self.name,
            clock=self.clock,
            database=self.database,
            extensions=self.extension_state,
        )
        started: list[Extension] = []
        connected: list[Channel] = []
        try:
            for extension in self.extensions:
                await extension.start(self)
                started.append(extension)
            for channel in self._channels.values():
                await channel.connect(environment)
                connected.append(channel)
        except BaseException:
            await self._close(connected, started)
            raise
        self._started = True

    async def stop(self) -> None:
        """Close every channel and the database; `async with app:` calls it on the way out."""
        if not self._started:
            return
        self._started = False
        await self._close(list(self._channels.values()), self.extensions)

    async def _close(self, channels: list[Channel], extensions: list[Extension]) -> None:
        await asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True)
        await self._deduplication.stop_purging()
        for store in (self.dead_letters.store, self.deduplication_store):
            close = getattr(store, "close", None)  # stores with a connection of their own
            if close is not None:
                await close()
        for extension in reversed(extensions):
            await extension.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def consumer(
        self,
        *channels: str,
        concurrency: int = 10,
        batch_size: int = 100,
        message_limit: int | None = None,
        time_limit: float | None = None,
        memory_limit_mb: float | None = None,
        stop_when_empty: bool = False,
        drain_timeout: float = 30.0,
        raise_errors: bool = False,
        schedules: bool = True,
    ) -> Consumer:
        """A consumer of `channels` (all declared ones if none are named); `await consumer.run()`.

        `consumer.stop()` (or SIGTERM/SIGINT with `run(handle_signals=True)`) ends receiving; in-flight
        handlers get up to `drain_timeout` seconds to finish, and anything unfinished goes back to its
        channel without costing an attempt.
        """
        from tidings._consumer import Consumer

        names = channels or tuple(self._channels)
        for name in names:
            self.channel(name)
        return Consumer(
            self,
            names,
            concurrency=concurrency,
            batch_size=batch_size,
            message_limit=message_limit,
            time_limit=time_limit,
            memory_limit_mb=memory_limit_mb,
            stop_when_empty=stop_when_empty,
            drain_timeout=drain_timeout,
            raise_errors=raise_errors,
            schedules=schedules,
        )

    async def run(self, *channels: str, handle_signals: bool = False, **options: Any) -> ConsumerStats:
        """Consume `channels` until stopped or a limit is hit; options as for `consumer(...)`."""
        if not self._started:
            raise ConfigurationError("start the app before running consumers: `async with app:`")
        return await self.consumer(*channels, **options).run(handle_signals=handle_signals)

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A database transaction; messages published inside it commit with it (the outbox).

        Messages for channels outside the database are sent after the commit, never before.
        """
        from tidings.sql._integration import SqlExtension

        for extension in self.extensions:
            if isinstance(extension, SqlExtension):
                transaction: AbstractAsyncContextManager[Any] = extension.transaction()
                return transaction
        raise ConfigurationError(
            f"app '{self.name}' has no database; pass App(database='sqlite+aiosqlite:///app.db') "
            f"or another SQLAlchemy URL to use transactions"
        )


def _link_send(middleware: Middleware, call_next: SendNext) -> SendNext:
    def step(outgoing: Outgoing) -> Any:
        return middleware.send(outgoing, call_next)

    return step
