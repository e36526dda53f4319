"""Test an app's flows in memory, with a clock that moves only when told to.

`FlowTest(app)` rebuilds the app with every channel replaced by an in-memory one (same names, same
pipeline: serialization, headers, middleware, retries, dead letter) and a `ManualClock`::

    async with FlowTest(app) as flow:
        await flow.send(PlaceOrder("o-1", 100))
        await flow.run("notifications")          # until idle; handler errors are raised here
        flow.advance(timedelta(minutes=5))       # release delayed messages
        await flow.run("inventory")
        assert flow.recorded_events == [OrderPlaced("o-1", 100)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, final

from tidings._app import App, CombinedChannel
from tidings._clock import ManualClock
from tidings._consumer import ConsumerStats
from tidings._decorators import HandlerKind
from tidings.channels.base import Channel
from tidings.channels.memory import InMemoryChannel

__all__ = ["FlowTest", "ManualClock", "RecordedMessage"]

_KEEP: Any = object()


@final
class RecordedMessage:
    """A message that went through a bus during the test, with its headers."""

    __slots__ = ("headers", "kind", "payload")

    def __init__(self, kind: HandlerKind, payload: Any, headers: Mapping[str, str]) -> None:
        self.kind = kind
        self.payload = payload
        self.headers = dict(headers)

    def __repr__(self) -> str:
        return f"RecordedMessage({self.kind}, {self.payload!r})"


@final
class FlowTest:
    """An app rebuilt for tests: in-memory channels, a manual clock, recorded messages.

    `keep_channels` names channels to keep as configured (e.g. a real SQL channel under test);
    `database` replaces the app's database (None keeps it).
    """

    def __init__(
        self,
        app: App,
        *,
        clock: ManualClock | None = None,
        keep_channels: Iterable[str] = (),
        database: Any = _KEEP,
        raise_errors: bool = True,
    ) -> None:
        self.clock = clock or ManualClock()
        self.raise_errors = raise_errors
        keep = set(keep_channels)
        channels: list[Channel | CombinedChannel] = []
        for item in app._config["channels"]:
            if isinstance(item, Channel) and item.name not in keep:
                channels.append(InMemoryChannel(item.name, lease_seconds=item.lease_seconds))
            else:
                channels.append(item)
        changes: dict[str, Any] = {"channels": channels, "clock": self.clock}
        if database is not _KEEP:
            changes["database"] = database
        self.app = app.replace(**changes)
        self.recorded: list[RecordedMessage] = []
        self.app.dispatcher.observers.append(self._record)

    def _record(self, kind: HandlerKind, payload: Any, headers: Mapping[str, str]) -> None:
        self.recorded.append(RecordedMessage(kind, payload, headers))

    async def __aenter__(self) -> FlowTest:
        await self.app.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.app.stop()

    # -- driving ----------------------------------------------------------------------------------

    async def send(self, command: Any, **options: Any) -> Any:
        """`app.commands.send(...)`."""
        return await self.app.commands.send(command, **options)

    async def publish(self, event: Any, **options: Any) -> None:
        """`app.events.publish(...)`."""
        await self.app.events.publish(event, **options)

    async def ask(self, query: Any, **options: Any) -> Any:
        """`app.queries.ask(...)`."""
        return await self.app.queries.ask(query, **options)

    async def run(
        self,
        *channels: str,
        raise_errors: bool | None = None,
        message_limit: int | None = None,
    ) -> ConsumerStats:
        """Consume `channels` (all if none named) until nothing more is due, then return.

        A handler's exception is raised here unless `raise_errors=False`, in which case the app's
        failure policy (retries, dead letter) deals with it as in production.
        """
        return await self.app.run(
            *channels,
            stop_when_empty=True,
            message_limit=message_limit,
            raise_errors=self.raise_errors if raise_errors is None else raise_errors,
            drain_timeout=5.0,
            schedules=False,
        )

    def advance(self, by: timedelta | float) -> None:
        """Move the clock forward, releasing delayed messages that become due."""
        self.clock.advance(by.total_seconds() if isinstance(by, timedelta) else by)

    async def depth(self, channel: str) -> int:
        """How many messages wait in `channel`, delayed ones included."""
        return await self.app.channel(channel).depth()

    # -- recorded ---------------------------------------------------------------------------------

    @property
    def recorded_commands(self) -> list[Any]:
        """Payloads of the commands sent through the bus, in order."""
        return [m.payload for m in self.recorded if m.kind == "command"]

    @property
    def recorded_events(self) -> list[Any]:
        """Payloads of the events published through the bus, in order."""
        return [m.payload for m in self.recorded if m.kind == "event"]

    def discard_recorded(self) -> None:
        """Forget what was recorded so far."""
        self.recorded.clear()
