"""A channel in the process's memory: a real channel, not a mock.

It honours delays, priority and leases against the app's clock, so tests can advance a `ManualClock`
instead of waiting. Messages do not survive the process; use it for tests and for work that may be lost.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, final

from tidings._clock import Clock, SystemClock
from tidings.channels.base import Capabilities, Channel, ChannelEnvironment, Delivery

if TYPE_CHECKING:
    from tidings._message import Envelope

__all__ = ["InMemoryChannel"]


class _Item:
    __slots__ = ("count", "envelope", "priority", "token")

    def __init__(self, envelope: Envelope, priority: int) -> None:
        self.envelope = envelope
        self.priority = priority
        self.count = 0
        self.token = 0


@final
class InMemoryChannel(Channel):
    """A queue channel kept in memory, with delay, priority and lease expiry."""

    capabilities = Capabilities(delay=True, priority=True, ordered=True)

    def __init__(self, name: str, *, lease_seconds: float = 30.0) -> None:
        super().__init__(name, lease_seconds=lease_seconds)
        self._clock: Clock = SystemClock()
        self._sequence = itertools.count()
        self._ready: list[tuple[int, int, _Item]] = []
        self._delayed: list[tuple[float, int, _Item]] = []
        self._leased: dict[int, tuple[float, _Item]] = {}
        self._lease_expiries: list[tuple[float, int]] = []
        self._changed: asyncio.Event | None = None

    async def connect(self, environment: ChannelEnvironment) -> None:
        self._clock = environment.clock

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        delayed, ready, sequence = self._delayed, self._ready, self._sequence
        for envelope in envelopes:
            item = _Item(envelope, envelope.priority)
            deliver_at = envelope.deliver_at
            if deliver_at is not None and deliver_at > self._clock.now():
                heapq.heappush(delayed, (deliver_at, next(sequence), item))
            else:
                heapq.heappush(ready, (-item.priority, next(sequence), item))
        self._notify()

    def _release_due(self, now: float) -> None:
        delayed, ready, sequence = self._delayed, self._ready, self._sequence
        while delayed and delayed[0][0] <= now:
            item = heapq.heappop(delayed)[2]
            heapq.heappush(ready, (-item.priority, next(sequence), item))
        expiries = self._lease_expiries
        while expiries and expiries[0][0] <= now:
            _, token = heapq.heappop(expiries)
            leased = self._leased.get(token)
            if leased is not None and leased[0] <= now:
                del self._leased[token]
                heapq.heappush(ready, (-leased[1].priority, next(sequence), leased[1]))

    def _next_due(self) -> float | None:
        candidates = []
        if self._delayed:
            candidates.append(self._delayed[0][0])
        if self._lease_expiries:
            candidates.append(self._lease_expiries[0][0])
        return min(candidates) if candidates else None

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now = self._clock.now()
            self._release_due(now)
            if self._ready:
                return self._lease(max_messages, now)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await self._wait_for_change(remaining, now)

    def _lease(self, max_messages: int, now: float) -> list[Delivery]:
        until = now + self.lease_seconds
        deliveries: list[Delivery] = []
        ready, leased, sequence = self._ready, self._leased, self._sequence
        expiries = self._lease_expiries
        while ready and len(deliveries) < max_messages:
            item = heapq.heappop(ready)[2]
            item.count += 1
            item.token = next(sequence)
            leased[item.token] = (until, item)
            heapq.heappush(expiries, (until, item.token))
            deliveries.append(Delivery(item.envelope, item.token, item.count))
        return deliveries

    async def _wait_for_change(self, remaining: float, now: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._changed.wait())]
        next_due = self._next_due()
        if next_due is not None:
            waiters.append(asyncio.ensure_future(self._clock.sleep(next_due - now)))
        try:
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self._leased.pop(delivery.receipt, None)

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        due = self._clock.now() + delay
        for delivery in deliveries:
            leased = self._leased.pop(delivery.receipt, None)
            if leased is None:
                continue
            item = leased[1]
            if delay > 0:
                heapq.heappush(self._delayed, (due, next(self._sequence), item))
            else:
                heapq.heappush(self._ready, (-item.priority, next(self._sequence), item))
        self._notify()

    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        until = self._clock.now() + seconds
        for delivery in deliveries:
            leased = self._leased.get(delivery.receipt)
            if leased is not None:
                self._leased[delivery.receipt] = (until, leased[1])
                heapq.heappush(self._lease_expiries, (until, delivery.receipt))

    async def purge(self) -> None:
        self._ready.clear()
        self._delayed.clear()
        self._leased.clear()
        self._lease_expiries.clear()

    async def depth(self) -> int:
        return len(self._ready) + len(self._delayed) + len(self._leased)
