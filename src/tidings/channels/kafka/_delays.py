"""Delays on Kafka: a fixed set of delay topics, each a hop of one length, and records waiting for
the end of their hop in the consumer that fetched them.

A record that must wait `r` seconds goes to the delay topic of the longest hop `d <= r` (the shortest
when `r` is below every hop) and carries the time its hop ends: `min(due, now + d)`. Every record of
a delay topic other than the shortest leaves after exactly its hop, so records leave such a topic in
the order they entered it: the consumer reads a partition only up to the first record whose hop has
not ended, and pauses the partition until then. The shortest topic also holds records due sooner
than its hop; those leave out of order, within one hop of entering, so the consumer reads that topic
without pausing and keeps its records in a heap. When a hop ends the record is produced again, to the
channel's topic if it is due, else to the delay topic for the time left; its offset is settled (and
committed) only after that produce was confirmed, so a crash replays the hop, never loses it.

Nothing waits in the channel's own topic: a message delayed for an hour never holds up the messages
behind it, and a short delay is never held behind a long one. A delay of any length uses only the
fixed topics: a day takes 24 hops of an hour.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from tidings._clock import Clock

from ._ledger import PartitionLedger

__all__ = ["DEFAULT_DELAY_TIERS", "DelayTiers", "Held", "Holding", "tier_label"]

log = logging.getLogger("tidings.channels.kafka")

#: Hop lengths in seconds: 1 s, 5 s, 30 s, 2 min, 10 min, 1 h.
DEFAULT_DELAY_TIERS: Final = (1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)


def tier_label(seconds: float) -> str:
    """A short name for a hop length, used in topic names: 500ms, 1s, 2m, 1h."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    milliseconds = seconds * 1000
    if milliseconds.is_integer():
        return f"{int(milliseconds)}ms"
    raise ValueError(f"a delay tier must be a whole number of milliseconds, got {seconds}")


class DelayTiers:
    """The delay topics of one channel topic and the choice among them."""

    def __init__(self, topic: str, hops: Sequence[float]) -> None:
        ordered = sorted({float(hop) for hop in hops})
        if not ordered or ordered[0] <= 0:
            raise ValueError(f"delay tiers must be positive numbers of seconds, got {list(hops)}")
        self.hops = ordered
        self.topics = [f"{topic}.delay.{tier_label(hop)}" for hop in ordered]
        self.shortest_topic = self.topics[0]
        self._hop_of = dict(zip(self.topics, ordered, strict=True))

    def route(self, due: float, now: float) -> tuple[str, float]:
        """The delay topic for a record due at `due`, and when its hop there ends."""
        index = max(bisect.bisect_right(self.hops, due - now) - 1, 0)
        return self.topics[index], min(due, now + self.hops[index])

    def __contains__(self, topic: str) -> bool:
        return topic in self._hop_of


class Held:
    """A record from a delay topic (or an early one from the channel's topic) waiting for its hop."""

    __slots__ = ("body", "deliveries", "due", "headers", "ledger", "offset")

    def __init__(
        self,
        ledger: PartitionLedger,
        offset: int,
        body: bytes,
        headers: dict[str, str],
        due: float,
        deliveries: int,
    ) -> None:
        self.ledger = ledger
        self.offset = offset
        self.body = body
        #: The message's own headers, without the channel's private ones.
        self.headers = headers
        self.due = due
        self.deliveries = deliveries


class Holding:
    """Records whose hop has not ended, forwarded in batches as hops end."""

    def __init__(self, clock: Clock, forward: Callable[[list[Held]], Awaitable[None]]) -> None:
        self._clock = clock
        self._forward = forward
        self._heap: list[tuple[float, int, Held]] = []
        self._sequence = itertools.count()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, held: Held, until: float) -> None:
        heapq.heappush(self._heap, (until, next(self._sequence), held))
        if self._heap[0][2] is held:
            self._changed.set()

    def clear(self) -> None:
        self._heap.clear()

    async def run(self) -> None:
        """Forward records as their hops end; runs until cancelled."""
        heap = self._heap
        while True:
            now = self._clock.now()
            ended: list[Held] = []
            while heap and heap[0][0] <= now:
                held = heapq.heappop(heap)[2]
                if held.ledger.live:
                    ended.append(held)
            if ended:
                try:
                    await self._forward(ended)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(
                        "forwarding %d delayed records failed; trying again in a second", len(ended)
                    )
                    for held in ended:
                        self.hold(held, self._clock.now() + 1.0)
                continue
            await self._wait(heap[0][0] - now if heap else None)

    async def _wait(self, seconds: float | None) -> None:
        self._changed.clear()
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._changed.wait())]
        if seconds is not None:
            waiters.append(asyncio.ensure_future(self._clock.sleep(seconds)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
