"""The Kafka channel's own promises, beyond the conformance suite: ordering per key, failures and
delays that never block a partition, offsets committed only up to the lowest unsettled record,
leases, group members sharing partitions, depth and purge."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from tests.kafka_server import KafkaServer

from tidings import headers as h
from tidings._clock import ManualClock
from tidings._message import Envelope
from tidings.channels.base import Delivery
from tidings.channels.kafka import KafkaChannel
from tidings.exceptions import ChannelUnavailable, DriverMissing

from .conftest import OpenChannel, environment

pytestmark = pytest.mark.kafka


def envelope(n: int, **headers: str) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", h.ENDPOINT: "ep", **headers})


def number(delivery: Delivery) -> int:
    return int(delivery.envelope.body.decode().split(":")[1].rstrip("}"))


async def receive_all(
    channel: KafkaChannel, count: int, timeout: float = 15.0, batch: int = 100
) -> list[Delivery]:
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(deliveries) < count and time.monotonic() < deadline:
        deliveries += await channel.receive(min(batch, count - len(deliveries)), timeout=0.5)
    return deliveries


async def join(channel: KafkaChannel) -> None:
    """Start the channel's group member and wait until it holds partitions (joins take a second)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert await channel.receive(1, timeout=0.1) == []
        if channel._consumer is not None and channel._consumer.assignment():
            return
    raise AssertionError("the channel did not join its group")


def partition_of(delivery: Delivery) -> int:
    partition: int = delivery.ledger.partition.partition  # type: ignore[attr-defined]  # a _Receipt
    return partition


async def test_messages_of_one_key_are_received_in_the_order_they_were_sent(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(key_header="tenant", partitions=4)
    tenants = [f"tenant-{t}" for t in range(5)]
    for start in range(0, 200, 40):
        await channel.send([envelope(n, tenant=tenants[n % 5]) for n in range(start, start + 40)])

    received = await receive_all(channel, 200, batch=30)
    await channel.ack(received)

    assert sorted(map(number, received)) == list(range(200))
    for tenant in tenants:
        mine = [d for d in received if d.envelope.headers["tenant"] == tenant]
        assert [number(d) for d in mine] == sorted(number(d) for d in mine)
        assert len({partition_of(d) for d in mine}) == 1
    assert len({partition_of(d) for d in received}) > 1


async def test_a_message_without_the_key_header_is_keyed_by_its_ordering_key_else_by_its_id(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(key_header="tenant", partitions=8)
    ordered = {h.ORDERING_KEY: "order-7"}
    await channel.send(
        [envelope(1), envelope(1), envelope(2, tenant="acme")]
        + [envelope(n, **ordered) for n in range(10, 30)]
    )

    received = await receive_all(channel, 23)
    await channel.ack(received)

    same_id = [d for d in received if d.envelope.message_id == "m-1"]
    assert len(same_id) == 2
    assert partition_of(same_id[0]) == partition_of(same_id[1])
    same_key = [d for d in received if h.ORDERING_KEY in d.envelope.headers]
    assert len({partition_of(d) for d in same_key}) == 1
    assert [number(d) for d in same_key] == list(range(10, 30))


async def test_a_failing_message_does_not_block_its_partition(open_channel: OpenChannel) -> None:
    channel = await open_channel(key_header="tenant", partitions=1)
    await channel.send([envelope(n, tenant="acme") for n in range(10)])
    first = await receive_all(channel, 1, batch=1)
    assert [number(d) for d in first] == [0]

    await channel.nack(first, delay=1.5)
    started = time.monotonic()
    behind = await receive_all(channel, 9, batch=1)
    await channel.ack(behind)

    assert [number(d) for d in behind] == list(range(1, 10))
    assert time.monotonic() - started < 1.2
    assert await channel.depth() == 1  # only the retry, waiting in a delay topic
    again = await receive_all(channel, 1, timeout=6.0)
    assert [(number(d), d.delivery_count) for d in again] == [(0, 2)]
    await channel.ack(again)
    assert await channel.depth() == 0


async def test_a_message_nacked_without_delay_comes_back_behind_the_messages_sent_after_it(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(partitions=1)
    await channel.send([envelope(n) for n in range(5)])
    first = await receive_all(channel, 1, batch=1)

    await channel.nack(first)
    rest = await receive_all(channel, 5)
    await channel.ack(rest)

    assert [number(d) for d in rest] == [1, 2, 3, 4, 0]
    assert rest[-1].delivery_count == 2
    assert rest[-1].envelope.headers == first[0].envelope.headers


async def test_delays_of_many_lengths_arrive_on_time_through_the_fixed_delay_topics_only(
    open_channel: OpenChannel, kafka_server: Any, topic_prefix: str
) -> None:
    channel = await open_channel()
    await join(channel)
    delays = [0.2, 0.45, 0.8, 1.0, 1.3, 1.75, 2.2, 2.9, 3.6, 4.4, 5.2, 6.1]
    sent_at = time.time()
    await channel.send(
        [envelope(n, **{h.DELIVER_AT: repr(sent_at + delay)}) for n, delay in enumerate(delays)]
    )

    arrivals: dict[int, float] = {}
    deadline = time.monotonic() + 15
    while len(arrivals) < len(delays) and time.monotonic() < deadline:
        for delivery in await channel.receive(20, timeout=0.2):
            arrivals[number(delivery)] = time.time() - sent_at
            await channel.ack([delivery])

    assert sorted(arrivals) == list(range(len(delays)))
    for n, delay in enumerate(delays):
        assert delay <= arrivals[n] <= delay + 0.6, (n, delay, arrivals[n])
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_server.bootstrap_servers)
    await admin.start()
    try:
        topics = {topic for topic in await admin.list_topics() if topic.startswith(topic_prefix)}
    finally:
        await admin.close()
    hops = ["1s", "5s", "30s", "2m", "10m", "1h"]
    assert topics == {channel.topic, *(f"{channel.topic}.delay.{hop}" for hop in hops)}
    assert await channel.depth() == 0


async def test_a_long_delay_hops_through_the_longest_fitting_delay_topic_then_shorter_ones(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(delay_tiers=[0.1, 0.5])
    await join(channel)
    sent_at = time.time()
    await channel.send([envelope(1, **{h.DELIVER_AT: repr(sent_at + 3.3)})])

    received = await receive_all(channel, 1, timeout=10)
    arrived = time.time() - sent_at
    await channel.ack(received)

    assert [number(d) for d in received] == [1]
    assert 3.3 <= arrived <= 3.3 + 0.6
    assert channel._broker is not None
    ends = await channel._broker.ends({(f"{channel.topic}.delay.{hop}", 0): 0 for hop in ("100ms", "500ms")})
    long_hops = ends[(f"{channel.topic}.delay.500ms", 0)].high_watermark
    short_hops = ends[(f"{channel.topic}.delay.100ms", 0)].high_watermark
    assert long_hops == 6  # 3.3 s: six hops of 0.5 s ...
    assert 1 <= short_hops <= 3  # ... and the 0.3 s left in hops of at most 0.1 s


async def test_a_delay_of_an_hour_follows_the_app_clock(open_channel: OpenChannel) -> None:
    clock = ManualClock()
    channel = await open_channel(clock=clock)
    await channel.send([envelope(1, **{h.DELIVER_AT: repr(clock.now() + 3600)}), envelope(2)])

    first = await receive_all(channel, 2, timeout=4)
    assert [number(d) for d in first] == [2]
    await channel.ack(first)
    assert await channel.depth() == 1

    clock.advance(3599)
    assert await channel.receive(10, timeout=0.5) == []
    clock.advance(1)
    later = await receive_all(channel, 1, timeout=5)

    assert [number(d) for d in later] == [1]
    await channel.ack(later)


async def test_a_record_written_straight_to_the_topic_is_not_handed_out_before_its_deliver_at(
    open_channel: OpenChannel, raw_producer: Any
) -> None:
    channel = await open_channel()
    await join(channel)
    due = time.time() + 1.5
    await raw_producer.send_and_wait(
        channel.topic,
        b'{"n": 5}',
        key=b"k",
        headers=[(h.MESSAGE_ID, b"m-5"), (h.DELIVER_AT, repr(due).encode()), ("odd", b"\xff\xfe")],
    )

    received = await receive_all(channel, 1, timeout=6)

    assert [number(d) for d in received] == [5]
    assert time.time() >= due
    assert received[0].envelope.headers["odd"] == "\ufffd\ufffd"
    await channel.ack(received)


async def test_records_with_malformed_headers_from_other_producers_are_handed_out(
    open_channel: OpenChannel, raw_producer: Any
) -> None:
    channel = await open_channel()
    bad = [(h.DELIVER_AT, b"soon"), (h.TIMESTAMP, b"today"), ("tidings-kafka.deliveries", b"many")]
    await raw_producer.send_and_wait(channel.topic, b'{"n": 1}', key=b"k", headers=bad)
    await channel.send([envelope(2)])

    received = await receive_all(channel, 2)
    await channel.ack(received)

    assert sorted(number(d) for d in received) == [1, 2]
    foreign = next(d for d in received if number(d) == 1)
    assert foreign.envelope.headers == {h.DELIVER_AT: "soon", h.TIMESTAMP: "today"}
    assert foreign.delivery_count == 1


async def test_headers_travel_as_one_readable_record_header_and_other_producers_headers_are_taken_as_they_are(
    open_channel: OpenChannel, raw_producer: Any, kafka_server: KafkaServer
) -> None:
    channel = await open_channel(partitions=1)
    await channel.send([envelope(1, tenant="acme")])
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_server.bootstrap_servers, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign([TopicPartition(channel.topic, 0)])
        await reader.seek_to_beginning()
        record = await asyncio.wait_for(reader.getone(), timeout=10)
    finally:
        await reader.stop()
    packed = b'{"tidings.id":"m-1","tidings.endpoint":"ep","tenant":"acme"}'
    assert list(record.headers) == [("tidings.headers", packed)]
    await raw_producer.send_and_wait(
        channel.topic, b'{"n": 2}', headers=[("tidings.headers", b"not json"), (h.MESSAGE_ID, b"m-2")]
    )

    received = await receive_all(channel, 2)

    assert [d.envelope.headers for d in received] == [
        {h.MESSAGE_ID: "m-1", h.ENDPOINT: "ep", "tenant": "acme"},
        {"tidings.headers": "not json", h.MESSAGE_ID: "m-2"},
    ]
    await channel.ack(received)


async def test_the_next_member_resumes_from_the_lowest_unacked_offset(open_channel: OpenChannel) -> None:
    first = await open_channel(partitions=1)
    await first.send([envelope(n) for n in range(10)])
    received = await receive_all(first, 10)
    assert [number(d) for d in received] == list(range(10))

    await first.ack([d for d in received if number(d) in {0, 1, 2, 3, 4, 7}])
    await first.close()  # the handlers of 5, 6, 8 and 9 never finished
    second = await open_channel(partitions=1)
    again = await receive_all(second, 5, timeout=20)
    await second.ack(again)

    # 7 comes again: it was acked, but above the lowest unacked offset.
    assert [number(d) for d in again] == [5, 6, 7, 8, 9]


async def test_a_lease_that_runs_out_brings_the_message_back_and_the_late_ack_changes_nothing(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(lease_seconds=1.0)
    await channel.send([envelope(1)])
    first = await receive_all(channel, 1)

    again = await receive_all(channel, 1, timeout=5)
    await channel.ack(first)

    assert [(number(d), d.delivery_count) for d in again] == [(1, 2)]
    assert await channel.depth() == 1
    await channel.ack(again)
    assert await channel.depth() == 0


async def test_acked_messages_are_let_go_at_once_not_kept_until_their_lease_would_end(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(partitions=1)
    await channel.send([envelope(n) for n in range(10)])
    received = await receive_all(channel, 10)

    await channel.ack(received[5:])
    held_behind_the_first_unsettled = len(channel._leases)
    await channel.ack(received[:5])

    assert held_behind_the_first_unsettled == 10
    assert len(channel._leases) == 0


async def test_depth_counts_messages_acked_out_of_order_only_once(open_channel: OpenChannel) -> None:
    channel = await open_channel(partitions=1)
    await channel.send([envelope(n) for n in range(10)])
    received = await receive_all(channel, 10)

    await channel.ack([d for d in received if number(d) % 2])
    assert await channel.depth() == 5
    await channel.ack(received)
    assert await channel.depth() == 0


async def test_purging_while_consuming_drops_what_was_fetched(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    await channel.send([envelope(n) for n in range(20)])
    leased = await receive_all(channel, 5, batch=5)

    await channel.purge()
    await channel.ack(leased)

    assert await channel.depth() == 0
    assert await channel.receive(10, timeout=0.5) == []
    await channel.send([envelope(100)])
    after = await receive_all(channel, 1)
    assert [number(d) for d in after] == [100]
    await channel.ack(after)


async def test_two_members_share_the_partitions_and_each_message_comes_once(
    open_channel: OpenChannel,
) -> None:
    one, two = await open_channel(partitions=4), await open_channel(partitions=4)
    got: dict[str, list[int]] = {"one": [], "two": []}
    stop = asyncio.Event()

    async def work(name: str, channel: KafkaChannel) -> None:
        while not stop.is_set():
            deliveries = await channel.receive(10, timeout=0.2)
            got[name] += [number(d) for d in deliveries]
            await channel.ack(deliveries)

    workers = [asyncio.ensure_future(work("one", one)), asyncio.ensure_future(work("two", two))]
    try:
        # Both joined and the group settled: each holds some of the partitions.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (one._consumer and two._consumer):
            await asyncio.sleep(0.1)
        while time.monotonic() < deadline and not (one._consumer.assignment() and two._consumer.assignment()):
            await asyncio.sleep(0.1)
        await one.send([envelope(n) for n in range(100)])
        while time.monotonic() < deadline and len(got["one"]) + len(got["two"]) < 100:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*workers)

    assert sorted(got["one"] + got["two"]) == list(range(100))
    assert got["one"]
    assert got["two"]


async def test_connecting_to_a_broker_that_is_not_there_raises_channel_unavailable() -> None:
    channel = KafkaChannel("nowhere", bootstrap_servers="127.0.0.1:1", request_timeout=2.0)

    with pytest.raises(ChannelUnavailable, match="cannot reach Kafka"):
        await channel.connect(environment())


def test_a_channel_without_its_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiokafka", None)

    with pytest.raises(DriverMissing, match=r"tidings\[kafka\]"):
        KafkaChannel("orders")
