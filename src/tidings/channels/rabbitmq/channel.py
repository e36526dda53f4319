"""A channel on RabbitMQ (AMQP 0-9-1), spoken through aiormq.

aiormq rather than aio-pika (which is built on it): the channel needs what aio-pika wraps away (one
socket write per batch of publishes, plain delivery callbacks without a message object each), and
measured faster that way (`bench/rabbitmq_channel.py`).

What maps onto what:

- **Queue.** One durable work queue named after the channel, with `x-max-priority`; messages are
  persistent and every send waits for publisher confirms, pipelined (a whole batch is written, then
  all confirms are awaited together).
- **Delay.** The delayed-message plugin is not assumed: a fixed cascade of delay queues with queue-level
  TTLs and dead-letter exchanges holds messages back (see `_topology`). `tidings.deliver-at` stays the
  absolute due time, so a message that reaches the work queue early is sent round again.
- **Priority.** `x-max-priority` on the work queue; received messages wait in local lanes by priority,
  so that a prefetched batch is handed out highest priority first as well.
- **TTL.** Per-message `expiration` for messages that go straight to the work queue (consumers check
  `tidings.expires-at` on receive anyway; a delayed message expires only by that check).
- **Lease.** AMQP has no lease: the broker redelivers an unacked message only when the connection or
  channel that holds it closes (the consumer crashed). A lease is therefore kept here, on the app's
  clock: a delivery not settled within `lease_seconds` is rejected with requeue, so it is delivered
  again, and `extend_lease` pushes that deadline.
- **Headers.** An envelope's headers travel as one AMQP header, `tidings.headers`, holding them as
  a JSON object (one field-table entry for pamqp to encode and decode instead of one per header);
  a message without it, from another producer, has its AMQP headers taken as they are.
- **Acks.** Batched: `multiple=True` on the highest tag when every lower unsettled tag is settled too,
  never covering a message before it was handed to `ack`. Frames are written on the next loop turn,
  so acks from concurrent handlers coalesce into one frame.
- **Reconnects.** A lost connection is reopened with backoff, the topology declared again and the
  consumer resubscribed. Deliveries received on the lost connection are dropped locally (the broker
  redelivers them); acking them later is a no-op.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast, final

import msgspec

from tidings import headers as h
from tidings._clock import Clock, SystemClock
from tidings._message import Envelope
from tidings._serialization import PACKED_HEADERS, pack_headers, unpack_headers
from tidings.channels.base import Capabilities, Channel, ChannelEnvironment, Delivery
from tidings.channels.rabbitmq._link import ACK, REQUEUE, Link, Receipt
from tidings.channels.rabbitmq._publisher import publish
from tidings.channels.rabbitmq._topology import Topology
from tidings.exceptions import (
    ChannelUnavailable,
    ConfigurationError,
    DriverMissing,
    PublishFailed,
)

if TYPE_CHECKING:
    import aiormq
    from aiormq.abc import DeliveredMessage
    from pamqp.commands import Basic
    from pamqp.common import FieldTable

__all__ = ["RabbitMQChannel"]

log = logging.getLogger("tidings.channels.rabbitmq")

#: Headers RabbitMQ adds when it dead-letters a message (each hop of the delay cascade does).
_BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
#: Publishes in flight at once; aiormq's confirm bookkeeping costs grow with the number in flight.
_PUBLISH_WINDOW = 1000
#: Loop turns `receive` waits at most for deliveries still on their way into the buffer.
_GATHER_TURNS = 16
_RECONNECT_FIRST_PAUSE = 0.1
_RECONNECT_LONGEST_PAUSE = 2.0

# (body, exchange, routing key, properties, envelope)
_Outgoing = tuple[bytes, str, str, "Basic.Properties", Envelope]


@final
class RabbitMQChannel(Channel):
    """A channel backed by a durable RabbitMQ queue, with delays, priority, TTL and leases.

    `prefetch` bounds the messages this consumer holds unacked, received or still buffered (it also
    caps how many deliveries can be leased at once; fewer spreads slow messages more evenly over
    workers);
    `max_priority` is the queue's `x-max-priority` (priorities above it count as it, below 0 as 0);
    `wait_for_broker` is how long `send` waits for a lost connection to come back, or for the
    confirms of a batch, before it raises `ChannelUnavailable`.
    """

    capabilities = Capabilities(delay=True, priority=True)

    def __init__(
        self,
        name: str,
        *,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        lease_seconds: float = 30.0,
        prefetch: int = 500,
        max_priority: int = 10,
        wait_for_broker: float = 30.0,
    ) -> None:
        super().__init__(name, lease_seconds=lease_seconds)
        try:
            import aiormq  # noqa: F401
        except ImportError:
            raise DriverMissing("RabbitMQChannel", "rabbitmq", "aiormq") from None
        if not 1 <= prefetch <= 65535:
            raise ValueError(f"prefetch must be between 1 and 65535, got {prefetch}")
        if not 1 <= max_priority <= 255:
            raise ValueError(f"max_priority must be between 1 and 255, got {max_priority}")
        self.url = url
        self.prefetch = prefetch
        self.max_priority = max_priority
        self.wait_for_broker = wait_for_broker
        self._topology = Topology(name, max_priority)
        self._clock: Clock = SystemClock()
        self._connection_name = f"tidings {name}"
        self._message_ids = itertools.count()
        self._message_id_prefix = os.urandom(4).hex() + "-"
        self._link: Link | None = None
        self._linked = asyncio.Event()
        self._closed = True
        self._consuming = False
        self._reconnector: asyncio.Task[None] | None = None
        self._closing_link: asyncio.Future[Any] | None = None
        self._lease_watcher: asyncio.Task[None] | None = None
        # Received and not yet handed out, one lane per priority (highest last).
        self._lanes: list[deque[Delivery]] = [deque() for _ in range(max_priority + 1)]
        self._buffered = 0
        self._arrived = asyncio.Event()
        # Lease deadlines: (deadline, sequence, receipts); stale entries are skipped when popped.
        self._leases: list[tuple[float, int, list[Receipt]]] = []
        self._lease_sequence = itertools.count()
        self._lease_changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"RabbitMQChannel({self.name!r})"

    # -- connection -------------------------------------------------------------------------------

    async def connect(self, environment: ChannelEnvironment) -> None:
        """Connect, declare the work queue and the delay cascade; raises `ChannelUnavailable`."""
        if not self._closed:
            return
        self._clock = environment.clock
        self._connection_name = f"tidings {environment.app_name} {self.name}"
        # Fresh for each connect: an event belongs to the loop that first waits on it.
        self._linked = asyncio.Event()
        self._arrived = asyncio.Event()
        self._lease_changed = asyncio.Event()
        self._closed = False
        try:
            link = await self._open_link()
        except ConfigurationError:
            self._closed = True
            raise
        except Exception as error:
            self._closed = True
            raise ChannelUnavailable(
                f"cannot reach RabbitMQ for channel {self.name!r} at {_safe_url(self.url)}: {error!r}",
                channel=self.name,
            ) from error
        self._install(link)
        self._lease_watcher = asyncio.ensure_future(self._watch_leases())

    async def close(self) -> None:
        """Close the connection; messages received and not acked go back to the queue."""
        if self._closed:
            return
        self._closed = True
        for task in (self._lease_watcher, self._reconnector):
            if task is not None:
                task.cancel()
        self._lease_watcher = self._reconnector = None
        link, self._link = self._link, None
        # Wakes sends waiting for a reconnect, which then see the channel closed.
        self._linked.set()
        self._forget_received()
        self._consuming = False
        if link is not None:
            await link.close()

    async def _open_link(self) -> Link:
        import aiormq
        from aiormq.exceptions import ChannelPreconditionFailed

        connection = await aiormq.connect(
            self.url, client_properties={"connection_name": self._connection_name}
        )
        try:
            publisher = cast("aiormq.Channel", await connection.channel(publisher_confirms=True))
            try:
                await self._topology.declare(publisher)
            except Exception as error:
                # The declarations are pipelined, so the error at hand may only say that the AMQP
                # channel closed; the reason is what closed it.
                reason = await _close_reason(publisher) or error
                if isinstance(reason, ChannelPreconditionFailed):
                    raise ConfigurationError(
                        f"RabbitMQ refused the queues of channel {self.name!r}: a queue or "
                        f"exchange of that name exists with other settings (delete it or pick "
                        f"another name): {reason}"
                    ) from error
                raise
            consumer = cast("aiormq.Channel", await connection.channel(publisher_confirms=False))
            link = Link(connection, publisher, consumer)
            if self._consuming:
                await self._subscribe(link)
        except BaseException:
            await connection.close()
            raise
        return link

    def _install(self, link: Link) -> None:
        self._link = link
        self._linked.set()
        for resource in (link.connection, link.publisher, link.consumer):
            resource.closing.add_done_callback(lambda _: self._lost(link))
        link.consumer.on_consumer_cancel_callbacks.add(lambda _: self._drop(link))

    def _drop(self, link: Link) -> None:
        # The broker cancelled our consumer (its queue was deleted): start over on a new connection,
        # which declares the queue again.
        log.warning("RabbitMQ cancelled the consumer of channel %r; reconnecting", self.name)
        self._closing_link = asyncio.ensure_future(link.connection.close())

    def _lost(self, link: Link) -> None:
        if not link.alive:
            return
        link.alive = False
        if self._link is link:
            self._link = None
            self._linked.clear()
            self._forget_received()
        if not self._closed and self._reconnector is None:
            log.warning("lost the RabbitMQ connection of channel %r; reconnecting", self.name)
            self._reconnector = asyncio.ensure_future(self._reconnect(link))

    def _forget_received(self) -> None:
        """Drop every delivery of the current link: the broker requeues them when it closes."""
        for lane in self._lanes:
            lane.clear()
        self._buffered = 0
        self._arrived.clear()
        self._leases.clear()

    async def _reconnect(self, lost: Link) -> None:
        try:
            await lost.close()
            pause = _RECONNECT_FIRST_PAUSE
            for attempt in itertools.count():
                if self._stopped():
                    return
                try:
                    link = await self._open_link()
                except Exception as error:
                    # Loud on the first failure, then about once a minute while the outage lasts.
                    log.log(
                        logging.WARNING if attempt % 30 == 0 else logging.DEBUG,
                        "RabbitMQ channel %r: reconnecting failed (%r); trying again every %.1f s",
                        self.name,
                        error,
                        pause,
                    )
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _RECONNECT_LONGEST_PAUSE)
                    continue
                if self._stopped():
                    await link.close()
                    return
                self._install(link)
                log.warning("RabbitMQ channel %r reconnected", self.name)
                return
        finally:
            self._reconnector = None

    def _stopped(self) -> bool:
        return self._closed

    async def _current_link(self, deadline: float) -> Link:
        """The live link, waiting for a reconnect until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        while True:
            link = self._link
            if link is not None and link.alive:
                if not link.closed:
                    return link
                # Closed, and the callbacks that say so have not run yet: do what they will do.
                self._lost(link)
                continue
            if self._closed:
                raise ChannelUnavailable(
                    f"RabbitMQ channel {self.name!r} is not connected", channel=self.name
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ChannelUnavailable(
                    f"RabbitMQ at {_safe_url(self.url)} has been unreachable for channel "
                    f"{self.name!r} for {self.wait_for_broker:.0f} s",
                    channel=self.name,
                )
            try:
                async with asyncio.timeout(remaining):
                    await self._linked.wait()
            except TimeoutError:
                pass

    # -- sending ----------------------------------------------------------------------------------

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        """Publish a batch as persistent messages and return once the broker confirmed all of them.

        Raises `PublishFailed` for messages the broker refused, `ChannelUnavailable` when it stays
        unreachable for `wait_for_broker` seconds (messages unconfirmed on a lost connection are
        published again on the next one).
        """
        if not envelopes:
            return
        now = self._clock.now()
        await self._publish([self._outgoing(envelope, now) for envelope in envelopes])

    def _outgoing(self, envelope: Envelope, now: float) -> _Outgoing:
        from pamqp.commands import Basic

        headers = envelope.headers
        priority = headers.get(h.PRIORITY)
        amqp_priority = None
        if priority is not None:
            amqp_priority = min(max(int(priority), 0), self.max_priority)
        expiration = None
        deliver_at = headers.get(h.DELIVER_AT)
        route = None if deliver_at is None else self._topology.delay_route(float(deliver_at) - now)
        if route is None:
            exchange, routing_key = "", self.name
            expires_at = headers.get(h.EXPIRES_AT)
            if expires_at is not None:
                expiration = str(max(math.ceil((float(expires_at) - now) * 1000), 0))
        else:
            # No per-message expiration inside the cascade: it would dead-letter the message early.
            exchange, routing_key = route
        properties = Basic.Properties(
            delivery_mode=2,
            priority=amqp_priority,
            headers={PACKED_HEADERS: pack_headers(headers).decode()},
            expiration=expiration,
            # Unique per publish: aiormq matches a returned message to its publish by this id, and
            # copies of one event share the tidings message id.
            message_id=f"{self._message_id_prefix}{next(self._message_ids)}",
        )
        return envelope.body, exchange, routing_key, properties, envelope

    async def _publish(self, outgoing: list[_Outgoing]) -> None:
        from aiormq.exceptions import DeliveryError
        from pamqp.commands import Basic

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_for_broker
        pending = outgoing
        refused: list[tuple[_Outgoing, object]] = []
        while pending:
            link = await self._current_link(deadline)
            lost: list[_Outgoing] = []
            for start in range(0, len(pending), _PUBLISH_WINDOW):
                window = pending[start : start + _PUBLISH_WINDOW]
                try:
                    async with asyncio.timeout(self.wait_for_broker):
                        results = await publish(link.publisher, window, batched=link.batched)
                except TimeoutError:
                    raise ChannelUnavailable(
                        f"RabbitMQ did not confirm messages on channel {self.name!r} within "
                        f"{self.wait_for_broker:.0f} s (is a resource alarm blocking publishers?)",
                        channel=self.name,
                    ) from None
                except Exception as error:
                    # Typically the AMQP channel closed before the window was written.
                    results = [error] * len(window)
                for item, result in zip(window, results, strict=True):
                    if isinstance(result, Basic.Ack):
                        continue
                    if isinstance(result, DeliveryError | Basic.Nack):
                        refused.append((item, result))
                    else:
                        lost.append(item)
                        last_error: object = result
            if lost and not link.closed:
                # Not a lost connection: something else went wrong, and trying again would repeat it.
                refused.extend((item, last_error) for item in lost)
                lost = []
            if lost:
                log.warning(
                    "RabbitMQ channel %r: %d message(s) unconfirmed when the connection was lost; "
                    "publishing them again",
                    self.name,
                    len(lost),
                )
            pending = lost
        if refused:
            raise PublishFailed(
                f"RabbitMQ did not accept {len(refused)} message(s) on channel {self.name!r} "
                f"(was its queue deleted?): {refused[0][1]!r}",
                channel=self.name,
                envelopes=[item[4] for item, _ in refused],
            )

    # -- receiving --------------------------------------------------------------------------------

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to `max_messages` messages, highest priority first, waiting up to `timeout`."""
        if not self._consuming:
            await self._start_consuming()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while not self._buffered:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    return []
            # Deliveries already read from the socket wait in callback tasks that have not run yet:
            # let them in while they keep coming, so that a busy queue is received (and acked) in
            # full batches rather than a few messages at a time. A quiet queue costs one loop turn.
            for _ in range(_GATHER_TURNS):
                if self._buffered >= max_messages:
                    break
                before = self._buffered
                await asyncio.sleep(0)
                if self._buffered == before:
                    break
            if self._buffered:  # unless a concurrent receive took them meanwhile
                return self._lease(max_messages)

    async def _start_consuming(self) -> None:
        # Consuming starts with the first receive, so that a channel only sent to holds no messages.
        self._consuming = True
        link = self._link
        if link is not None and link.alive:
            try:
                await self._subscribe(link)
            except Exception as error:
                # The link is going down; the reconnect subscribes again.
                log.debug("subscribing failed, the connection is closing: %r", error)

    async def _subscribe(self, link: Link) -> None:
        await link.consumer.basic_qos(prefetch_count=self.prefetch)
        consuming = await link.consumer.basic_consume(self.name, self._consumer(link))
        link.consumer_tag = consuming.consumer_tag

    def _consumer(self, link: Link) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        lanes, top, ledger, arrived = self._lanes, self.max_priority, link.ledger, self._arrived

        async def on_message(message: DeliveredMessage) -> None:
            if not link.alive:
                return
            frame = cast("Basic.Deliver", message.delivery)
            tag = cast(int, frame.delivery_tag)
            ledger.add(tag)
            properties = message.header.properties
            table = properties.headers
            headers = {} if table is None else _envelope_headers(table)
            envelope = Envelope(message.body, headers)
            receipt = Receipt(link, tag)
            if h.DELIVER_AT in headers and self._early(envelope):
                await self._send_round_again(receipt, envelope)
                return
            priority = properties.priority or 0
            lanes[top if priority > top else priority].append(
                Delivery(envelope, receipt, 2 if frame.redelivered else 1)
            )
            self._buffered += 1
            arrived.set()

        return on_message

    def _early(self, envelope: Envelope) -> bool:
        try:
            deliver_at = envelope.deliver_at
        except ValueError:
            return False
        return deliver_at is not None and deliver_at > self._clock.now()

    async def _send_round_again(self, receipt: Receipt, envelope: Envelope) -> None:
        """A delay longer than one pass of the cascade (or a clock ahead of ours): delay it again."""
        link = receipt.link
        try:
            await self._publish([self._outgoing(envelope, self._clock.now())])
        except Exception as error:
            log.warning(
                "RabbitMQ channel %r could not delay message %s again (%r); it goes back to the queue",
                self.name,
                envelope.message_id,
                error,
            )
            operation = REQUEUE
        else:
            operation = ACK
        link.settle([receipt], operation)

    def _lease(self, max_messages: int) -> list[Delivery]:
        taken: list[Delivery] = []
        for lane in reversed(self._lanes):
            if not lane:
                continue
            wanted = max_messages - len(taken)
            if len(lane) <= wanted:
                taken.extend(lane)
                lane.clear()
            else:
                taken.extend(lane.popleft() for _ in range(wanted))
            if len(taken) >= max_messages:
                break
        self._buffered -= len(taken)
        if not self._buffered:
            self._arrived.clear()
        deadline = self._clock.now() + self.lease_seconds
        receipts: list[Receipt] = []
        for delivery in taken:
            receipt: Receipt = delivery.receipt
            receipt.deadline = deadline
            receipts.append(receipt)
        self._watch(deadline, receipts)
        return taken

    # -- settling ---------------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove handled deliveries, with one `multiple` ack where that covers only these."""
        link = self._link
        if link is not None:
            # Written on the next loop turn, together with whatever else is settled until then.
            link.settle(_receipts(deliveries), ACK)

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Give deliveries back: requeued at once, or after `delay` seconds via the delay cascade.

        A delayed nack publishes a copy (with `tidings.deliver-at` moved) and acks the original once
        the copy is confirmed.
        """
        link = self._link
        if link is None:
            return
        if delay <= 0:
            link.settle(_receipts(deliveries), REQUEUE)
            return
        held = [d for d in deliveries if d.receipt.link is link and not d.receipt.settled]
        if not held:
            return
        deadlines = [d.receipt.deadline for d in held]
        for delivery in held:
            # Not leased out from under the publish below.
            delivery.receipt.deadline = math.inf
        now = self._clock.now()
        due = repr(now + delay)
        try:
            await self._publish(
                [self._outgoing(d.envelope.with_headers({h.DELIVER_AT: due}), now) for d in held]
            )
        except BaseException:
            for delivery, deadline in zip(held, deadlines, strict=True):
                delivery.receipt.deadline = deadline
                self._watch(deadline, [delivery.receipt])
            raise
        link.settle(_receipts(held), ACK)

    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        """Keep deliveries leased for another `seconds` from now (on the app's clock)."""
        deadline = self._clock.now() + seconds
        receipts = [r for r in _receipts(deliveries) if not r.settled]
        for receipt in receipts:
            receipt.deadline = deadline
        if receipts:
            self._watch(deadline, receipts)

    # -- leases -----------------------------------------------------------------------------------

    def _watch(self, deadline: float, receipts: list[Receipt]) -> None:
        if not receipts:
            return
        sequence = next(self._lease_sequence)
        leases = self._leases
        heapq.heappush(leases, (deadline, sequence, receipts))
        if leases[0][1] == sequence:
            # The new deadline is the earliest: the watcher sleeps until a later one.
            self._lease_changed.set()

    async def _watch_leases(self) -> None:
        clock, leases, changed = self._clock, self._leases, self._lease_changed
        while True:
            now = clock.now()
            expired: list[Receipt] = []
            while leases and leases[0][0] <= now:
                expired.extend(r for r in heapq.heappop(leases)[2] if r.deadline <= now)
            link = self._link
            if expired and link is not None and link.settle(expired, REQUEUE):
                log.debug("RabbitMQ channel %r: %d lease(s) ran out; requeued", self.name, len(expired))
            changed.clear()
            if not leases:
                await changed.wait()
                continue
            sleeper = asyncio.ensure_future(clock.sleep(leases[0][0] - now))
            waker = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    # -- operators --------------------------------------------------------------------------------

    async def purge(self) -> None:
        """Empty the queue and the delay cascade, and drop what this consumer holds."""
        link = await self._current_link(asyncio.get_running_loop().time() + self.wait_for_broker)
        await self._topology.purge(link.publisher)
        held = [d.receipt for lane in self._lanes for d in lane]
        held += [r for _, _, receipts in self._leases for r in receipts]
        for lane in self._lanes:
            lane.clear()
        self._buffered = 0
        self._arrived.clear()
        self._leases.clear()
        if link.settle(held, ACK):
            await link.flush()

    async def depth(self) -> int:
        """Messages in the queue and the cascade, plus those this consumer holds unacked.

        Messages other consumers hold unacked are not counted: AMQP does not report them.
        """
        link = await self._current_link(asyncio.get_running_loop().time() + self.wait_for_broker)
        return await self._topology.count(link.publisher) + len(link.ledger)

    async def delete(self) -> None:
        """Delete the queue and the delay cascade from the broker, with every message in them.

        The channel is closed afterwards; connecting again declares everything anew.
        """
        link = await self._current_link(asyncio.get_running_loop().time() + self.wait_for_broker)
        try:
            if link.consumer_tag is not None:
                # Stopped first: the broker would otherwise cancel it, and the channel reconnect.
                self._consuming = False
                await link.consumer.basic_cancel(link.consumer_tag)
            await self._topology.delete(link.publisher)
        finally:
            await self.close()


async def _close_reason(channel: aiormq.Channel) -> BaseException | None:
    """Why the broker closed an AMQP channel, waiting a moment for the close to arrive."""
    try:
        async with asyncio.timeout(1.0):
            await channel.closing
    except TimeoutError:
        return None
    except Exception as reason:
        return reason
    return None


def _receipts(deliveries: Iterable[Delivery]) -> list[Receipt]:
    return [delivery.receipt for delivery in deliveries]


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, separator, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{separator}{user}:***@{location}"


def _envelope_headers(table: FieldTable) -> dict[str, str]:
    """A received message's headers: ours unpacked, else its AMQP headers less the broker's own."""
    packed = table.get(PACKED_HEADERS)
    if packed is not None:
        try:
            return unpack_headers(cast(str, packed))
        except (msgspec.DecodeError, TypeError):
            pass  # not ours after all (another producer used the name): the table as it is, then
    if "x-death" in table:  # the broker's dead-letter headers come with it
        return cast("dict[str, str]", {k: v for k, v in table.items() if k not in _BROKER_HEADERS})
    return cast("dict[str, str]", table)
