"""Which fetched offsets of a partition are still unsettled, and committing what is safe to commit.

Kafka stores one position per partition and group: everything below it counts as done. Deliveries are
settled one by one and out of order (a slow handler finishes after a fast one), so the position
committed is the lowest offset still unsettled, never beyond it: a crash then redelivers what was not
finished (and perhaps some that were; deduplication absorbs those), never loses anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = ["Committer", "PartitionLedger"]

log = logging.getLogger("tidings.channels.kafka")


class PartitionLedger:
    """The offsets of one partition fetched during one assignment, and which are settled.

    A ledger lives as long as its partition stays assigned; when the partition is revoked (or purged)
    the ledger dies, and settling a delivery of a dead ledger changes nothing: the partition's next
    owner redelivers it from the committed position.
    """

    __slots__ = ("_next", "_open", "_order", "committed", "live", "partition")

    def __init__(self, partition: Any, position: int) -> None:
        #: aiokafka's TopicPartition.
        self.partition = partition
        self._open: set[int] = set()
        #: Fetched offsets in order; settled ones leave from the left once nothing lower is open.
        self._order: deque[int] = deque()
        self._next = position
        #: The position last committed (or the one the partition was fetched from).
        self.committed = position
        self.live = True

    def add(self, offsets: list[int]) -> None:
        """Record fetched offsets; they arrive in increasing order."""
        if offsets:
            self._order.extend(offsets)
            self._open.update(offsets)
            self._next = offsets[-1] + 1

    def settle(self, offset: int) -> bool:
        """Mark an offset done; False if it was not open (already settled, or never fetched)."""
        try:
            self._open.remove(offset)
        except KeyError:
            return False
        return True

    def is_open(self, offset: int) -> bool:
        return offset in self._open

    @property
    def unsettled(self) -> int:
        return len(self._open)

    def position(self) -> int:
        """The position safe to commit: the lowest open offset, or past the last fetched one."""
        order, still_open = self._order, self._open
        while order and order[0] not in still_open:
            order.popleft()
        return order[0] if order else self._next

    def settled_beyond_position(self) -> int:
        """How many offsets at or above `position()` are settled already (out of order)."""
        self.position()
        return len(self._order) - len(self._open)

    def fetched_up_to(self) -> int:
        """The offset after the last one fetched."""
        return self._next


class Committer:
    """Commits the positions of changed ledgers, one commit at a time; what changes meanwhile goes
    into the next one.

    `schedule(ledgers)` returns at once (acks do not wait for the broker: a crash before the commit
    only means redelivery); `commit(ledgers)` returns once a commit that started after the call
    covered those ledgers. A failed commit is logged and its ledgers wait for the next request, since
    positions only move forward and redelivery covers what never got committed.
    """

    def __init__(self, send: Callable[[dict[Any, int]], Awaitable[None]], interval: float = 0.0) -> None:
        self._send = send
        #: Least time between two scheduled commits; `commit` does not wait for it.
        self.interval = interval
        self._dirty: set[PartitionLedger] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._running: asyncio.Task[None] | None = None
        self._urgent = asyncio.Event()
        self._last_sent = float("-inf")

    def schedule(self, ledgers: Iterable[PartitionLedger]) -> None:
        self._dirty.update(ledgers)
        if (self._dirty or self._waiters) and (self._running is None or self._running.done()):
            self._running = asyncio.ensure_future(self._run())

    async def commit(self, ledgers: Iterable[PartitionLedger]) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._urgent.set()
        self.schedule(ledgers)
        await waiter

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty or self._waiters:
            pause = self._last_sent + self.interval - loop.time()
            if pause > 0 and not self._waiters:
                self._urgent.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._urgent.wait()
            waiters, self._waiters = self._waiters, []
            dirty, self._dirty = self._dirty, set()
            positions: dict[PartitionLedger, int] = {}
            for ledger in dirty:
                if ledger.live:
                    position = ledger.position()
                    if position > ledger.committed:
                        positions[ledger] = position
            failed = False
            if positions:
                self._last_sent = loop.time()
                try:
                    await self._send({ledger.partition: position for ledger, position in positions.items()})
                except asyncio.CancelledError:
                    for waiter in waiters + self._waiters:
                        waiter.cancel()
                    raise
                except Exception as error:
                    log.warning("committing offsets failed (the records will be delivered again): %s", error)
                    self._dirty.update(positions)
                    failed = True
                else:
                    for ledger, position in positions.items():
                        ledger.committed = max(ledger.committed, position)
            if failed:
                # Wait for the next request rather than retry at once against a broker that refused.
                waiters, self._waiters = waiters + self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if failed:
                return

    async def close(self) -> None:
        if self._running is not None and not self._running.done():
            await asyncio.gather(self._running, return_exceptions=True)
