"""A channel on Kafka, spoken through aiokafka: a stream behind the same queue contract.

What maps onto what:

- **Topic and group.** One topic per channel (created on connect with `partitions` partitions) and
  one consumer group per channel (`group_id`, default `tidings-<topic>`): the workers of a channel
  share its partitions. A new group starts at the earliest offset, so nothing sent before the first
  worker joined is skipped. The group consumer joins on the first `receive`, never on `connect`:
  processes that only send never take partitions away from the workers. The channel's copies
  (nacks, expired leases, ended delays) go back to its own topic, so a topic is meant for one group:
  another group reading it would see those copies too.
- **Rebalances.** When partitions leave a member, deliveries of theirs still being handled get half
  the session timeout to be settled before the final commit; later acks of those change nothing (the
  next owner delivers them again). aiokafka leaves a group only from generation 1 on, so on brokers
  that count generations from 0 (Tansu) `close` sends the LeaveGroup itself, and the next member
  joins at once instead of after the session timeout.
- **Ordering.** Records are keyed by the header `key_header` (say `tenant`) when set and present,
  else by `tidings.ordering-key` (say an aggregate id) when present, else by the message id; so one
  key's messages share a partition and are fetched in send order. Records fetched together from
  several partitions are handed out interleaved by send time (`tidings.timestamp`), each partition's
  own order kept. Handlers running concurrently may of course finish out of order, and a retried
  message comes back after the messages sent behind it.
- **Acks and offsets.** Kafka keeps one position per partition, while deliveries are acked one by one
  and out of order. Each partition has a ledger of fetched offsets not yet settled; the position
  committed is the lowest unsettled offset, committed in the background as acks arrive (one commit
  at a time, at most one per `commit_interval`; acks arriving meanwhile share the next) and on
  close. After a crash the group's next
  owner of the partition resumes from there: unfinished messages come again (with perhaps some
  finished ones; deduplication absorbs those).
- **Nack.** Kafka cannot un-read one record without holding up its partition, so a nacked delivery is
  produced again as a copy (to the channel's topic, or through the delay topics when `delay > 0`) and
  the original counts as settled once the copy is confirmed.
- **Delay.** Durable and non-blocking, through a fixed set of delay topics `<topic>.delay.<hop>` that
  this channel's consumers read and forward (see `_delays`). A record fetched from the channel's topic
  before its `tidings.deliver-at` is never handed out: it goes through the delay topics first. Delays
  move forward only in processes that receive from the channel.
- **Lease.** Kafka has no per-record lease. A delivery not settled within `lease_seconds` (on the
  app's clock) is produced again for redelivery and its offset counts as settled; `extend_lease`
  pushes the deadline. A crashed consumer holds nothing: its uncommitted offsets are fetched again by
  the member that gets its partitions.
- **Priority.** Not honoured (`capabilities.priority` is False): a partition is read in order.
- **Depth.** For each partition of the channel's topic and its delay topics, the records between the
  group's position and the partition's end, less those this process settled out of order. The end is
  read from a Fetch answer's high watermark, not ListOffsets (see `_broker`), so depth is right on
  Tansu as well; records settled out of order by *another* process are counted until that process
  commits past them.
- **Purge.** Commits the end of every partition for the group and drops what this process fetched.
  Partitions held by other running members of the group cannot be committed from outside: those
  are left as they are (logged).
- **Headers.** An envelope's headers travel as one record header, `tidings.headers`, holding a
  JSON object (see `_codec`); a record from another producer has its headers taken as they are.
  Copies the channel produces also carry `tidings-kafka.*` headers (delivery count, due time, end of
  the hop), removed before delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import operator
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast, final

from tidings import headers as h
from tidings._clock import Clock, SystemClock
from tidings._message import Envelope
from tidings.channels.base import Capabilities, Channel, ChannelEnvironment, Delivery
from tidings.exceptions import ChannelUnavailable, DriverMissing, PublishFailed

from ._broker import Broker, TopicSpec
from ._codec import DELIVERIES, DUE, HOP_UNTIL, Headers, decode_headers, encode_headers
from ._delays import DEFAULT_DELAY_TIERS, DelayTiers, Held, Holding
from ._ledger import Committer, PartitionLedger

__all__ = ["KafkaChannel"]

log = logging.getLogger("tidings.channels.kafka")

_DELIVER_AT: Final = h.DELIVER_AT
_MESSAGE_ID: Final = h.MESSAGE_ID
_ORDERING_KEY: Final = h.ORDERING_KEY
_TIMESTAMP: Final = h.TIMESTAMP
_RESTART_PAUSE: Final = 1.0
#: How often the delay topics are still read while hand-out lags behind fetching.
_BUSY_POLL: Final = 0.1
#: (topic, key, value, headers) of one record to produce.
_Record = tuple[str, bytes | None, bytes, Headers]


class _Receipt(Delivery):
    """One fetched record of the channel's topic: waiting to be handed out, then leased.

    It is handed out as its own delivery (`receipt` stays None), so that hand-out allocates nothing.
    """

    __slots__ = ("deadline", "extended", "ledger", "offset", "sent_at", "settled")

    def __init__(
        self, envelope: Envelope, ledger: PartitionLedger, offset: int, deliveries: int, sent_at: float
    ) -> None:
        self.envelope = envelope
        self.receipt = None
        #: How often it was handed out, this time included.
        self.delivery_count = deliveries
        self.ledger = ledger
        self.offset = offset
        self.deadline = 0.0
        self.extended = False
        self.settled = False
        #: When the message was sent (its `tidings.timestamp`, else the record's timestamp), raised
        #: where needed to the latest before it in its partition, so that ordering by it keeps each
        #: partition's own order.
        self.sent_at = sent_at


_sent_at = operator.attrgetter("sent_at")


def _receipts(deliveries: Sequence[Delivery]) -> Sequence[_Receipt]:
    """The channel's deliveries are its receipts (see `_Receipt`)."""
    return cast("Sequence[_Receipt]", deliveries)


@final
class KafkaChannel(Channel):
    """A channel on a Kafka topic with a consumer group, delay topics and local leases.

    `partitions` and `replication_factor` apply when the channel creates its topics (an existing
    topic keeps its own); `delay_tiers` are the hop lengths of the delay topics in seconds, each with
    `delay_partitions` partitions; `key_header` names a header whose value orders messages, before
    `tidings.ordering-key` and the message id. `session_timeout` and `heartbeat_interval` (seconds)
    are the group member's; `fetch_max_wait` is how long the broker may hold a fetch that found
    nothing; `buffer_size` bounds the records fetched and not yet handed out; `commit_interval` is the
    least time between two commits of acked offsets (a crash redelivers at most that much more).
    `producer_options` and `consumer_options` go to aiokafka's producer and consumer, over the
    channel's own settings (except the group id and manual commits, which the channel relies on).
    """

    capabilities = Capabilities(delay=True, priority=False, ordered=True)

    def __init__(
        self,
        name: str,
        *,
        bootstrap_servers: str = "127.0.0.1:9092",
        topic: str | None = None,
        group_id: str | None = None,
        lease_seconds: float = 30.0,
        partitions: int = 4,
        replication_factor: int = 1,
        key_header: str | None = None,
        delay_tiers: Sequence[float] = DEFAULT_DELAY_TIERS,
        delay_partitions: int = 1,
        session_timeout: float = 10.0,
        heartbeat_interval: float = 3.0,
        fetch_max_wait: float = 0.1,
        buffer_size: int = 2000,
        commit_interval: float = 0.05,
        request_timeout: float = 30.0,
        producer_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name, lease_seconds=lease_seconds)
        try:
            import aiokafka  # noqa: F401
        except ImportError:
            raise DriverMissing("KafkaChannel", "kafka", "aiokafka") from None
        if partitions < 1 or delay_partitions < 1 or replication_factor < 1:
            raise ValueError("partitions, delay_partitions and replication_factor must be at least 1")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        if not 0 < heartbeat_interval < session_timeout:
            raise ValueError("heartbeat_interval must be positive and shorter than session_timeout")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic or name
        self.group_id = group_id or f"tidings-{self.topic}"
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.key_header = key_header
        self.delay_partitions = delay_partitions
        self.session_timeout = session_timeout
        self.heartbeat_interval = heartbeat_interval
        self.fetch_max_wait = fetch_max_wait
        self.buffer_size = buffer_size
        self.commit_interval = commit_interval
        self.request_timeout = request_timeout
        self.producer_options = dict(producer_options or {})
        self.consumer_options = dict(consumer_options or {})
        self._tiers = DelayTiers(self.topic, delay_tiers)
        self._key_names = tuple(
            dict.fromkeys(name for name in (key_header, _ORDERING_KEY, _MESSAGE_ID) if name)
        )
        self._clock: Clock = SystemClock()
        self._client_id = f"tidings-{name}"
        self._broker: Broker | None = None
        self._producer: Any = None
        self._consumer: Any = None
        self._consuming: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._helpers: list[asyncio.Task[None]] = []
        self._partition_counts: dict[str, int] = {}
        # Fetched from the channel's topic and not yet handed out.
        self._ready: deque[_Receipt] = deque()
        self._arrived = asyncio.Event()
        # Set when hand-out makes room in a full buffer.
        self._wanted = asyncio.Event()
        # Set whenever deliveries are settled, for a rebalance waiting on running handlers.
        self._settled = asyncio.Event()
        self._ledgers: dict[Any, PartitionLedger] = {}
        # Purged partitions: records below these offsets that are still on their way are dropped.
        self._purged_below: dict[tuple[str, int], int] = {}
        self._paused_delays: set[Any] = set()
        # Leased receipts in the order handed out (so by deadline), and those whose lease was extended.
        self._leases: deque[_Receipt] = deque()
        self._extended: list[tuple[float, int, _Receipt]] = []
        self._lease_sequence = itertools.count()
        self._holding = Holding(self._clock, self._forward)
        self._committer = Committer(self._commit_offsets, commit_interval)
        self._closed = True

    def __repr__(self) -> str:
        return f"KafkaChannel({self.name!r}, topic={self.topic!r})"

    # -- connection -------------------------------------------------------------------------------

    async def connect(self, environment: ChannelEnvironment) -> None:
        """Connect, create the topic and its delay topics, start the producer.

        Raises `ChannelUnavailable` when the broker cannot be reached.
        """
        if not self._closed:
            return
        from aiokafka import AIOKafkaProducer

        self._clock = environment.clock
        self._holding = Holding(self._clock, self._forward)
        self._client_id = f"tidings-{environment.app_name}-{self.name}"
        broker = Broker(self.bootstrap_servers, self._client_id, self.request_timeout)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            **{
                "client_id": self._client_id,
                "acks": "all",
                "linger_ms": 1,
                "request_timeout_ms": int(self.request_timeout * 1000),
                **self.producer_options,
            },
        )
        try:
            await broker.start()
            self._partition_counts = await broker.ensure_topics(self._topic_specs())
            await producer.start()
        except Exception as error:
            await _quietly(producer.stop())
            await _quietly(broker.close())
            raise ChannelUnavailable(
                f"cannot reach Kafka for channel {self.name!r} at {self.bootstrap_servers}: {error!r}",
                channel=self.name,
            ) from error
        self._broker, self._producer = broker, producer
        self._closed = False

    def _topic_specs(self) -> list[TopicSpec]:
        return [
            TopicSpec(self.topic, self.partitions, self.replication_factor),
            *(
                TopicSpec(topic, self.delay_partitions, self.replication_factor)
                for topic in self._tiers.topics
            ),
        ]

    async def close(self) -> None:
        """Stop consuming and producing; deliveries not acked are fetched again by the group."""
        if self._closed:
            return
        self._closed = True
        tasks = [task for task in (self._consuming, *self._helpers) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._consuming, self._helpers = None, []
        consumer = self._consumer
        if consumer is not None:
            await _quietly(
                self._committer.commit([ledger for ledger in self._ledgers.values() if ledger.live])
            )
            await self._committer.close()
            self._consumer = None
            await self._leave(consumer)
        self._forget_fetched()
        self._purged_below.clear()
        self._joined.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quietly(producer.stop())
        broker, self._broker = self._broker, None
        if broker is not None:
            await _quietly(broker.close())

    async def _leave(self, consumer: Any) -> None:
        coordinator = getattr(consumer, "_coordinator", None)
        generation = getattr(coordinator, "generation", None)
        member_id = getattr(coordinator, "member_id", "")
        await _quietly(consumer.stop())
        # aiokafka leaves the group only from generation 1 on; brokers that number generations from
        # 0 (Tansu) would otherwise keep the member until its session times out, and the next member
        # would wait that long to join.
        if generation == 0 and member_id and self._broker is not None:
            await _quietly(self._broker.leave_group(self.group_id, member_id))

    def _forget_fetched(self) -> None:
        for ledger in self._ledgers.values():
            ledger.live = False
        self._ledgers.clear()
        self._ready.clear()
        self._leases.clear()
        self._extended.clear()
        self._holding.clear()
        self._paused_delays.clear()

    def _require_producer(self) -> Any:
        if self._producer is None:
            raise ChannelUnavailable(f"Kafka channel {self.name!r} is not connected", channel=self.name)
        return self._producer

    # -- sending ----------------------------------------------------------------------------------

    def _key(self, headers: Mapping[str, str]) -> bytes | None:
        for name in self._key_names:
            value = headers.get(name)
            if value is not None:
                return value.encode()
        return None

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        """Produce a batch (acks=all) and return once the broker confirmed every record.

        A message due later goes to the delay topics. Raises `PublishFailed` with the messages the
        broker did not confirm.
        """
        if not envelopes:
            return
        now = self._clock.now()
        topic, route, key = self.topic, self._tiers.route, self._key
        records: list[_Record] = []
        for envelope in envelopes:
            headers = envelope.headers
            encoded = encode_headers(headers)
            deliver_at = headers.get(_DELIVER_AT)
            if deliver_at is not None and (due := float(deliver_at)) > now:
                delay_topic, hop_until = route(due, now)
                encoded += [(DUE, repr(due).encode()), (HOP_UNTIL, repr(hop_until).encode())]
                records.append((delay_topic, key(headers), envelope.body, encoded))
            else:
                records.append((topic, key(headers), envelope.body, encoded))
        failures = await self._produce(records)
        if failures:
            error = failures[0][1]
            raise PublishFailed(
                f"Kafka did not confirm {len(failures)} of {len(records)} messages on channel "
                f"{self.name!r}: {error!r}",
                channel=self.name,
                envelopes=[envelopes[i] for i, _ in failures],
            ) from error

    async def _produce(self, records: Sequence[_Record]) -> list[tuple[int, BaseException]]:
        """Produce records, all in flight at once; returns the (index, error) of those not confirmed."""
        producer = self._require_producer()
        futures: list[asyncio.Future[Any]] = []
        failures: list[tuple[int, BaseException]] = []
        for index, (topic, key, value, headers) in enumerate(records):
            try:
                futures.append(await producer.send(topic, value, key=key, headers=headers))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures.append((index, error))
                futures.append(_failed(error))
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed_at = {index for index, _ in failures}
        for index, result in enumerate(results):
            if isinstance(result, BaseException) and index not in failed_at:
                failures.append((index, result))
        failures.sort(key=lambda failure: failure[0])
        return failures

    # -- receiving --------------------------------------------------------------------------------

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Lease up to `max_messages` fetched messages, waiting up to `timeout` for the first."""
        if self._closed:
            raise ChannelUnavailable(f"Kafka channel {self.name!r} is not connected", channel=self.name)
        if self._consuming is None:
            self._consuming = asyncio.ensure_future(self._consume())
        ready = self._ready
        if not ready and timeout > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not ready:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    break
        if not ready or max_messages < 1:
            return []
        until = self._clock.now() + self.lease_seconds
        leases = self._leases
        deliveries: list[Delivery] = []
        while ready and len(deliveries) < max_messages:
            receipt = ready.popleft()
            if not receipt.ledger.live:
                continue
            receipt.deadline = until
            leases.append(receipt)
            deliveries.append(receipt)
        if len(ready) < self.buffer_size:
            self._wanted.set()
        return deliveries

    async def _consume(self) -> None:
        """Join the group, then fetch until cancelled; restarts the consumer if it fails."""
        from aiokafka import AIOKafkaConsumer

        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=self.group_id,
                enable_auto_commit=False,
                **{
                    "client_id": self._client_id,
                    "auto_offset_reset": "earliest",
                    "session_timeout_ms": int(self.session_timeout * 1000),
                    "heartbeat_interval_ms": int(self.heartbeat_interval * 1000),
                    "fetch_max_wait_ms": int(self.fetch_max_wait * 1000),
                    "request_timeout_ms": int(self.request_timeout * 1000),
                    **self.consumer_options,
                },
            )
            consumer.subscribe(topics=[self.topic, *self._tiers.topics], listener=_listener(self))
            try:
                await consumer.start()
            except asyncio.CancelledError:
                await _quietly(consumer.stop())
                raise
            except Exception as error:
                log.warning("Kafka channel %r could not join group %r: %r", self.name, self.group_id, error)
                await _quietly(consumer.stop())
                await asyncio.sleep(_RESTART_PAUSE)
                continue
            self._consumer = consumer
            self._joined.set()
            if not self._helpers:
                self._helpers = [
                    asyncio.ensure_future(self._holding.run()),
                    asyncio.ensure_future(self._watch_leases()),
                ]
            await self._fetch(consumer)

    async def _fetch(self, consumer: Any) -> None:
        """Take fetched records while hand-out keeps up; otherwise serve only the delay topics.

        Records aiokafka fetched and nobody took yet stay in its buffer, and it fetches nothing more
        for their partitions until they are taken: that is the back-pressure, without pausing the
        channel's partitions (resuming would cost a fetch round trip each time).
        """
        from aiokafka.errors import KafkaError

        main = self.topic
        while True:
            try:
                if len(self._ready) < self.buffer_size:
                    batches = await consumer.getmany(timeout_ms=1000, max_records=self.buffer_size)
                else:
                    delayed = [p for p in consumer.assignment() if p.topic != main]
                    batches = await consumer.getmany(*delayed, timeout_ms=0) if delayed else {}
                    if not batches:
                        self._wanted.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(_BUSY_POLL):
                                await self._wanted.wait()
            except asyncio.CancelledError:
                raise
            except KafkaError as error:
                log.warning("Kafka channel %r: fetching failed: %r", self.name, error)
                await asyncio.sleep(_RESTART_PAUSE)
                continue
            if batches:
                try:
                    self._take(consumer, batches)
                except Exception:
                    # A bug must not silently end fetching for good: say so, and go on.
                    log.exception("Kafka channel %r: filing fetched records failed", self.name)
                    await asyncio.sleep(_RESTART_PAUSE)

    def _take(self, consumer: Any, batches: dict[Any, list[Any]]) -> None:
        """File fetched records: due ones of the channel's topic for hand-out, the rest to wait."""
        now = self._clock.now()
        main, ledgers, ready = self.topic, self._ledgers, self._ready
        purged_below = self._purged_below
        fetched: list[list[_Receipt]] = []
        for partition, records in batches.items():
            if purged_below:
                floor = purged_below.get((partition.topic, partition.partition), -1)
                records = [record for record in records if record.offset >= floor]
                if not records:
                    continue
            ledger = ledgers.get(partition)
            if ledger is None:
                ledger = ledgers[partition] = PartitionLedger(partition, records[0].offset)
            ledger.add([record.offset for record in records])
            if partition.topic == main:
                fetched.append(self._take_due(ledger, records, now))
            elif self._take_delayed(ledger, records, now) and partition.topic != self._tiers.shortest_topic:
                # Records behind this one end their hops later: stop reading until it left.
                consumer.pause(partition)
                self._paused_delays.add(partition)
        if len(fetched) > 1:
            # Partitions interleaved by send time, so that across keys, too, older messages come first;
            # a stable sort keeps each partition's order, as `sent_at` never falls within one.
            ready.extend(sorted(itertools.chain.from_iterable(fetched), key=_sent_at))
        elif fetched:
            ready.extend(fetched[0])
        if ready:
            self._arrived.set()

    def _take_due(self, ledger: PartitionLedger, records: list[Any], now: float) -> list[_Receipt]:
        """Receipts for records of the channel's topic; early ones go to the delay topics instead."""
        receipts: list[_Receipt] = []
        latest = 0.0
        for record in records:
            offset = record.offset
            headers = decode_headers(record.headers)
            deliveries = _count(headers.pop(DELIVERIES)) + 1 if DELIVERIES in headers else 1
            deliver_at = headers.get(_DELIVER_AT)
            body = record.value or b""
            if deliver_at is not None and (due := _seconds(deliver_at, now)) > now:
                # Early (sent straight to the topic by another producer, or clocks disagree):
                # through the delay topics with it, never to a handler.
                self._holding.hold(Held(ledger, offset, body, headers, due, deliveries - 1), now)
                continue
            stamp = headers.get(_TIMESTAMP)
            sent_at = record.timestamp / 1000 if stamp is None else _seconds(stamp, 0.0)
            if sent_at > latest:
                latest = sent_at
            receipts.append(_Receipt(Envelope(body, headers), ledger, offset, deliveries, latest))
        return receipts

    def _take_delayed(self, ledger: PartitionLedger, records: list[Any], now: float) -> bool:
        """Hold records of a delay topic until their hops end; True if one has yet to end."""
        waits = False
        hold = self._holding.hold
        for record in records:
            offset = record.offset
            headers = decode_headers(record.headers)
            due = _seconds(headers.pop(DUE, ""), now)
            hop_until = _seconds(headers.pop(HOP_UNTIL, ""), now)
            deliveries = _count(headers.pop(DELIVERIES, "0"))
            hold(Held(ledger, offset, record.value or b"", headers, due, deliveries), hop_until)
            waits = waits or hop_until > now
        return waits

    async def _revoked(self, partitions: Any) -> None:
        """Partitions leave this member: let their running handlers finish for a moment, commit."""
        gone = {self._ledgers.pop(partition) for partition in partitions if partition in self._ledgers}
        self._paused_delays.difference_update(partitions)
        if not gone:
            return
        # Not handed out any more: the partition's next owner fetches them from the committed position.
        ready = [receipt for receipt in self._ready if receipt.ledger not in gone]
        self._ready.clear()
        self._ready.extend(ready)
        # Handlers still running on these partitions get part of the rebalance timeout (the session
        # timeout) to finish, so that the next owner does not run them a second time.
        try:
            async with asyncio.timeout(self.session_timeout / 2):
                while self._running_on(gone):
                    self._settled.clear()
                    await self._settled.wait()
        except TimeoutError:
            pass
        await _quietly(asyncio.wait_for(self._committer.commit(gone), self.session_timeout / 4))
        for ledger in gone:
            ledger.live = False

    def _running_on(self, ledgers: set[PartitionLedger]) -> bool:
        leased = itertools.chain(self._leases, (entry[2] for entry in self._extended))
        return any(not receipt.settled and receipt.ledger in ledgers for receipt in leased)

    def _assigned(self, partitions: Any) -> None:
        # A new assignment starts unpaused.
        self._paused_delays.clear()

    # -- settling ---------------------------------------------------------------------------------

    async def _commit_offsets(self, positions: dict[Any, int]) -> None:
        consumer = self._consumer
        if consumer is None:
            raise ChannelUnavailable("no group consumer", channel=self.name)
        # aiokafka retries some refusals (an unknown topic, say) for as long as it is let: a commit
        # that cannot succeed within a session must not hold up the next one, nor a rebalance.
        async with asyncio.timeout(self.session_timeout):
            await consumer.commit(positions)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Settle deliveries; the group's positions move past them in a commit that follows.

        The commit is not awaited (acks coalesce into few commits); `close` commits what is left.
        """
        touched: set[PartitionLedger] = set()
        for receipt in _receipts(deliveries):
            if receipt.settled:
                continue
            receipt.settled = True
            if receipt.ledger.settle(receipt.offset):
                touched.add(receipt.ledger)
        # Leases are mostly settled in the order they were handed out: those at the front go now,
        # rather than keep their messages in memory until the lease watcher's next turn.
        leases = self._leases
        while leases and leases[0].settled:
            leases.popleft()
        self._settled.set()
        if touched:
            self._committer.schedule(touched)

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        """Produce copies to be received again after `delay` seconds; the originals count as settled."""
        receipts = []
        for receipt in _receipts(deliveries):
            if not receipt.settled:
                receipt.settled = True
                receipts.append(receipt)
        self._settled.set()
        if receipts:
            await self._redeliver(receipts, delay)

    async def _redeliver(self, receipts: list[_Receipt], delay: float) -> None:
        now = self._clock.now()
        records: list[_Record] = []
        for receipt in receipts:
            headers = receipt.envelope.headers
            encoded = encode_headers(headers)
            encoded.append((DELIVERIES, str(receipt.delivery_count).encode()))
            if delay > 0:
                due = now + delay
                topic, hop_until = self._tiers.route(due, now)
                encoded += [(DUE, repr(due).encode()), (HOP_UNTIL, repr(hop_until).encode())]
            else:
                topic = self.topic
            records.append((topic, self._key(headers), receipt.envelope.body, encoded))
        failures = await self._produce(records)
        failed = {index for index, _ in failures}
        touched: set[PartitionLedger] = set()
        for index, receipt in enumerate(receipts):
            if index in failed:
                # Still leased: the lease (or a crash) brings it back.
                receipt.settled = False
            elif receipt.ledger.settle(receipt.offset):
                touched.add(receipt.ledger)
        if touched:
            self._committer.schedule(touched)
        if failures:
            raise PublishFailed(
                f"Kafka did not confirm {len(failures)} redeliveries on channel {self.name!r}: "
                f"{failures[0][1]!r}",
                channel=self.name,
                envelopes=[receipts[index].envelope for index in sorted(failed)],
            ) from failures[0][1]

    async def _forward(self, held: list[Held]) -> None:
        """Produce records whose hop ended: to the channel's topic when due, else to their next hop."""
        now = self._clock.now()
        route, key, main = self._tiers.route, self._key, self.topic
        records: list[_Record] = []
        for item in held:
            encoded = encode_headers(item.headers)
            if item.deliveries:
                encoded.append((DELIVERIES, str(item.deliveries).encode()))
            if item.due <= now:
                records.append((main, key(item.headers), item.body, encoded))
            else:
                topic, hop_until = route(item.due, now)
                encoded += [(DUE, repr(item.due).encode()), (HOP_UNTIL, repr(hop_until).encode())]
                records.append((topic, key(item.headers), item.body, encoded))
        failures = await self._produce(records)
        failed = {index for index, _ in failures}
        touched: set[PartitionLedger] = set()
        for index, item in enumerate(held):
            if index in failed:
                self._holding.hold(item, self._clock.now() + _RESTART_PAUSE)
            elif item.ledger.settle(item.offset):
                touched.add(item.ledger)
        if failures:
            log.warning(
                "Kafka channel %r: %d delayed records could not be forwarded (%r); trying again",
                self.name,
                len(failures),
                failures[0][1],
            )
        if touched:
            self._committer.schedule(touched)
        self._resume_drained_delays()

    def _resume_drained_delays(self) -> None:
        consumer = self._consumer
        if consumer is None or not self._paused_delays:
            return
        drained = [
            partition
            for partition in self._paused_delays
            if (ledger := self._ledgers.get(partition)) is None or not ledger.unsettled
        ]
        if drained:
            self._paused_delays.difference_update(drained)
            consumer.resume(*drained)

    # -- leases -----------------------------------------------------------------------------------

    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        until = self._clock.now() + seconds
        for receipt in _receipts(deliveries):
            if not receipt.settled:
                receipt.deadline = until
                receipt.extended = True

    async def _watch_leases(self) -> None:
        interval = min(self.lease_seconds / 4, 1.0)
        while True:
            await asyncio.sleep(interval)
            expired = self._expired(self._clock.now())
            if not expired:
                continue
            for receipt in expired:
                receipt.settled = True
            try:
                await self._redeliver(expired, 0.0)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("Kafka channel %r: redelivering expired leases failed: %r", self.name, error)
                retry_at = self._clock.now() + _RESTART_PAUSE
                for receipt in expired:
                    if not receipt.settled:
                        receipt.deadline = retry_at
                        heapq.heappush(self._extended, (retry_at, next(self._lease_sequence), receipt))

    def _expired(self, now: float) -> list[_Receipt]:
        expired: list[_Receipt] = []
        leases, extended = self._leases, self._extended
        while leases:
            receipt = leases[0]
            if receipt.settled or not receipt.ledger.live:
                leases.popleft()
            elif receipt.deadline <= now:
                expired.append(leases.popleft())
            elif receipt.extended:
                # Out of hand-out order now: kept by deadline instead.
                leases.popleft()
                heapq.heappush(extended, (receipt.deadline, next(self._lease_sequence), receipt))
            else:
                break
        while extended and extended[0][0] <= now:
            _, _, receipt = heapq.heappop(extended)
            if receipt.settled or not receipt.ledger.live:
                continue
            if receipt.deadline <= now:
                expired.append(receipt)
            else:
                heapq.heappush(extended, (receipt.deadline, next(self._lease_sequence), receipt))
        return expired

    # -- operations -------------------------------------------------------------------------------

    def _all_partitions(self) -> list[tuple[str, int]]:
        return [
            (topic, partition)
            for topic in (self.topic, *self._tiers.topics)
            for partition in range(self._partition_counts.get(topic, 0))
        ]

    def _require_broker(self) -> Broker:
        if self._broker is None:
            raise ChannelUnavailable(f"Kafka channel {self.name!r} is not connected", channel=self.name)
        return self._broker

    async def purge(self) -> None:
        """Commit the end of every partition for the group and drop everything fetched here."""
        broker = self._require_broker()
        if self._consuming is not None and not self._joined.is_set():
            # A join in progress would take partitions whose positions could then not be committed.
            try:
                async with asyncio.timeout(self.session_timeout * 2 + 5):
                    await self._joined.wait()
            except TimeoutError:
                pass
        partitions = self._all_partitions()
        committed = await broker.committed(self.group_id, partitions)
        ends = await broker.ends({p: max(committed.get(p, -1), 0) for p in partitions})
        targets = {p: ends[p].high_watermark for p in partitions}
        self._forget_fetched()
        self._purged_below.update(targets)
        consumer = self._consumer
        owned: dict[Any, int] = {}
        if consumer is not None:
            for partition in consumer.assignment():
                key = (partition.topic, partition.partition)
                if key in targets:
                    owned[partition] = targets[key]
                    consumer.seek(partition, targets[key])
                consumer.resume(partition)
            if owned:
                await consumer.commit(owned)
        others = {
            p: offset for p, offset in targets.items() if p not in {(o.topic, o.partition) for o in owned}
        }
        if others:
            refused = await broker.commit_outside_group(self.group_id, others)
            if refused:
                log.warning(
                    "Kafka channel %r: purge left %d partitions held by other members of group %r",
                    self.name,
                    len(refused),
                    self.group_id,
                )

    async def depth(self) -> int:
        """Messages waiting in the topic and its delay topics, leased ones included (see the module)."""
        broker = self._require_broker()
        partitions = self._all_partitions()
        committed = await broker.committed(self.group_id, partitions)
        ends = await broker.ends({p: max(committed.get(p, -1), 0) for p in partitions})
        total = 0
        for partition in partitions:
            end = ends[partition]
            ledger = self._ledgers.get(partition)
            if ledger is not None and ledger.live:
                position, settled = ledger.position(), ledger.settled_beyond_position()
            else:
                position, settled = committed.get(partition, -1), 0
            position = max(position, end.log_start)
            total += max(end.high_watermark - position - settled, 0)
        return total


def _listener(channel: KafkaChannel) -> Any:
    from aiokafka.abc import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await channel._revoked(revoked)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            channel._assigned(assigned)

    return Listener()


def _seconds(value: str, default: float) -> float:
    """A time header's value; `default` for a value some other producer wrote wrong."""
    try:
        return float(value)
    except ValueError:
        return default


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def _failed(error: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


async def _quietly(awaitable: Any) -> None:
    """Await a clean-up step; a failure is logged, never raised."""
    try:
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception as error:
        log.debug("Kafka clean-up step failed: %r", error)
