"""The channel contract: the one interface every broker implements.

Everything above it (routing slips, retries, dead letters, deduplication, TTL checks, the outbox relay)
is built once on these few operations. A channel promises **at-least-once** delivery: a received
message stays leased to its consumer until it is acknowledged; if the lease runs out first (the consumer
crashed or hung), the message is delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tidings._clock import Clock
    from tidings._message import Envelope

__all__ = ["Capabilities", "Channel", "ChannelEnvironment", "Delivery", "finish_even_if_cancelled"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a channel honours natively. Asking a channel for something it cannot honour fails at start-up."""

    #: Holds delayed messages durably until they are due (`tidings.deliver-at`).
    delay: bool = True
    #: Delivers higher priorities first among the messages that are due.
    priority: bool = True
    #: Longest delay the channel accepts in one hop, in seconds; None for no limit.
    max_delay: float | None = None
    #: Keeps send order for messages of one ordering key (or of the whole channel).
    ordered: bool = False
    #: Writes within the app's database transaction (the outbox); only SQL channels do.
    transactional: bool = False


@dataclass(frozen=True, slots=True)
class ChannelEnvironment:
    """What the app hands a channel when it connects."""

    app_name: str
    clock: Clock
    #: The app's database (a URL or an engine), for channels that store messages in it.
    database: Any = None
    #: Extension objects keyed by name, e.g. the SQL layer's database handle.
    extensions: dict[str, Any] = field(default_factory=dict)


class Delivery:
    """A received message, leased to the consumer that received it until acked or nacked.

    `receipt` is whatever the channel needs to ack, nack or extend this delivery.
    `delivery_count` is how often the broker handed this message out, where the broker knows.
    """

    __slots__ = ("delivery_count", "envelope", "receipt")

    def __init__(self, envelope: Envelope, receipt: Any, delivery_count: int = 1) -> None:
        self.envelope = envelope
        self.receipt = receipt
        self.delivery_count = delivery_count

    def __repr__(self) -> str:
        return f"Delivery({self.envelope!r}, delivery_count={self.delivery_count})"


class Channel(ABC):
    """A named place where asynchronous messages wait for their consumers.

    Implementations keep the same meaning on every broker:

    - `send` stores a batch durably before returning (publisher confirms where the broker has them).
      A message whose `deliver_at` is in the future is not received before then.
    - `receive` returns up to `max_messages` due messages, highest priority first where the channel
      orders by priority, each leased for `lease_seconds`; it waits up to `timeout` seconds for the
      first one and returns an empty list if none came.
    - `ack` removes deliveries for good; `nack` gives them back, receivable again after `delay` seconds.
    - `extend_lease` keeps deliveries leased while a long handler still runs.
    """

    #: What this kind of channel honours natively.
    capabilities: Capabilities = Capabilities()
    #: How many receives a consumer keeps in flight on this channel at once. More than one pays
    #: where a receive's round trip outlasts handling a batch, on channels whose `receive` may run
    #: concurrently with itself.
    concurrent_receives: int = 1

    def __init__(self, name: str, *, lease_seconds: float = 30.0) -> None:
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"a channel name uses letters, digits, '-', '_' and '.' only: {name!r}")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.name = name
        self.lease_seconds = lease_seconds

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    async def connect(self, environment: ChannelEnvironment) -> None:  # noqa: B027
        """Open connections and declare what the channel needs (queues, tables, streams)."""

    async def close(self) -> None:  # noqa: B027
        """Release connections; deliveries not acked are redelivered by the broker later."""

    @abstractmethod
    async def send(self, envelopes: Sequence[Envelope]) -> None:
        """Store a batch of messages durably."""

    @abstractmethod
    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to `max_messages` due messages, waiting up to `timeout` seconds for the first."""

    @abstractmethod
    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove handled deliveries from the channel."""

    @abstractmethod
    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Give deliveries back, to be received again after `delay` seconds."""

    @abstractmethod
    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Keep deliveries leased for another `seconds` from now."""

    @abstractmethod
    async def purge(self) -> None:
        """Remove every message waiting in the channel (for tests and operators)."""

    @abstractmethod
    async def depth(self) -> int:
        """How many messages wait in the channel, due or delayed, leased ones included."""


async def finish_even_if_cancelled(operation: Awaitable[T], give_back: Callable[[T], Awaitable[object]]) -> T:
    """Await a claim that must not be cut off midway.

    A consumer that stops cancels its receive; a claim cut off mid-statement could leave its rows
    leased to nobody until the lease ran out (or, on SQLite, keep the database's one write lock). So
    the claim finishes, `give_back` returns what it took, and only then does the cancellation go on.
    """
    running = asyncio.ensure_future(operation)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await give_back(await running)
        raise
