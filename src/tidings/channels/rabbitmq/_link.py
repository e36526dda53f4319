"""One live connection to RabbitMQ and what hangs off it: AMQP channels, unsettled tags, settle frames.

A delivery tag means something only on the AMQP channel that delivered it. When the connection drops,
the broker requeues everything unsettled on it, so deliveries received on a dead link are never acked
on a new one: their receipts still point at the dead link, and settling them is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from tidings.channels.rabbitmq._ledger import Ledger
from tidings.channels.rabbitmq._publisher import batches_supported

if TYPE_CHECKING:
    from aiormq import Channel
    from aiormq.abc import AbstractConnection

__all__ = ["ACK", "REQUEUE", "Link", "Receipt"]

log = logging.getLogger("tidings.channels.rabbitmq")

#: Settle operations: remove for good, or give back to the queue.
ACK: Final = 0
REQUEUE: Final = 1


class Receipt:
    """What a RabbitMQ delivery needs to be settled: its link, its tag, and its lease deadline."""

    __slots__ = ("deadline", "link", "settled", "tag")

    def __init__(self, link: Link, tag: int) -> None:
        self.link = link
        self.tag = tag
        #: When the lease runs out (on the app's clock); infinite while not leased.
        self.deadline = float("inf")
        self.settled = False


class Link:
    """A connection with one AMQP channel for publishing (with confirms) and one for consuming."""

    __slots__ = (
        "_flusher",
        "_pending",
        "alive",
        "batched",
        "connection",
        "consumer",
        "consumer_tag",
        "ledger",
        "publisher",
    )

    def __init__(
        self,
        connection: AbstractConnection,
        publisher: Channel,
        consumer: Channel,
    ) -> None:
        self.connection = connection
        self.publisher = publisher
        self.consumer = consumer
        #: Set once this link consumes the work queue.
        self.consumer_tag: str | None = None
        self.ledger = Ledger()
        self.alive = True
        #: Whether a batch goes out in one write (see `_publisher`).
        self.batched = batches_supported(publisher)
        # Settle frames in the order their tags were settled: a `multiple` frame may only reach the
        # broker after the single frames for lower tags that were settled before it.
        self._pending: deque[tuple[int, int, bool]] = deque()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self.connection.is_closed or self.publisher.is_closed or self.consumer.is_closed

    def settle(self, receipts: Iterable[Receipt], operation: int) -> bool:
        """Mark receipts of this link settled and queue the fewest frames that say so.

        Receipts already settled, or from another (dead) link, are skipped. The frames are written
        on the next loop turn (AMQP does not answer acks, so there is nothing to wait for); `flush`
        waits for them. Returns whether frames were queued.
        """
        tags = []
        for receipt in receipts:
            if receipt.settled or receipt.link is not self:
                continue
            receipt.settled = True
            tags.append(receipt.tag)
        if not tags or not self.alive:
            return False
        upto, singles = self.ledger.settle(tags)
        pending = self._pending
        if upto is not None:
            # A `multiple` frame also covers the same operation's frames still queued for lower
            # tags: those tags are unsettled on the broker until written, so they can go in this one.
            while pending and pending[-1][0] == operation and pending[-1][1] < upto:
                pending.pop()
            pending.append((operation, upto, True))
        pending.extend((operation, tag, False) for tag in singles)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._write_pending())
        return True

    async def flush(self) -> None:
        """Wait until the queued settle frames are written."""
        while self._flusher is not None:
            # Shielded: a caller that gives up waiting must not stop frames that others rely on.
            await asyncio.shield(self._flusher)

    async def _write_pending(self) -> None:
        # Starts on the next loop turn: settles made until then join the frames written now.
        pending, channel = self._pending, self.consumer
        try:
            while pending:
                operation, tag, multiple = pending.popleft()
                if operation == ACK:
                    await channel.basic_ack(tag, multiple=multiple, wait=False)
                else:
                    await channel.basic_nack(tag, multiple=multiple, requeue=True, wait=False)
        except Exception as error:
            # The connection is gone; the broker requeues whatever these frames would have settled.
            log.debug("settle frames not written, the connection is closing: %r", error)
            pending.clear()
        finally:
            self._flusher = None

    async def close(self) -> None:
        """Write what is still queued, then close the connection (unsettled deliveries go back)."""
        self.alive = False
        await self.flush()
        try:
            await self.connection.close()
        except Exception as error:
            log.debug("closing the connection failed: %r", error)
