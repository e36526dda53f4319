"""What the RabbitMQ channel promises beyond the shared conformance suite."""

from __future__ import annotations

import asyncio
import sys
import time

import aiormq
import pytest
from pamqp.commands import Basic

from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.base import Delivery
from tidings.channels.rabbitmq import RabbitMQChannel
from tidings.channels.rabbitmq._ledger import Ledger
from tidings.channels.rabbitmq._topology import LEVELS, MAX_DELAY, TICK_MS, Topology
from tidings.exceptions import ConfigurationError, DriverMissing, PublishFailed

from .conftest import OpenChannel, delete_topology, environment, queue_names

rabbitmq = pytest.mark.rabbitmq


def envelope(n: int, **headers: str) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", **headers})


def number(delivery: Delivery) -> int:
    return int(delivery.envelope.body.decode().split(":")[1].rstrip("}"))


async def drain(channel: RabbitMQChannel, count: int, timeout: float = 10.0) -> list[Delivery]:
    received: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        received += await channel.receive(count - len(received), timeout=0.3)
    return received


# -- without a broker ------------------------------------------------------------------------------


def test_a_channel_without_its_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aiormq", None)

    with pytest.raises(DriverMissing, match=r"tidings\[rabbitmq\]"):
        RabbitMQChannel("orders")


def test_a_delay_is_rounded_up_to_whole_ticks_and_never_shortened() -> None:
    topology = Topology("orders", max_priority=10)

    for seconds in (0.001, 0.016, 0.017, 0.5, 1.5, 3.0, 60.0, 3600.0):
        route = topology.delay_route(seconds)
        assert route is not None
        bits = route[1].split(".")
        assert len(bits) == LEVELS
        ticks = int("".join(bits), 2)
        assert ticks * TICK_MS >= seconds * 1000
        assert (ticks - 1) * TICK_MS < seconds * 1000
        # It enters the cascade at its highest 1-bit.
        assert route[0] == f"orders.delay-{TICK_MS << (ticks.bit_length() - 1)}ms"


def test_no_delay_needs_no_cascade_and_a_very_long_one_takes_one_full_pass() -> None:
    topology = Topology("orders", max_priority=10)

    assert topology.delay_route(0) is None
    assert topology.delay_route(-5) is None
    route = topology.delay_route(MAX_DELAY * 3)
    assert route is not None
    assert set(route[1].split(".")) == {"1"}


def test_the_ledger_settles_with_one_frame_only_what_is_in_the_batch() -> None:
    ledger = Ledger()
    for tag in range(1, 11):
        ledger.add(tag)

    # 1..4 settle together; 6 is beyond the unsettled 5 and must go on its own.
    assert ledger.settle([1, 2, 3, 4, 6]) == (4, [6])
    # 5 closes the gap: it and 7, 8 (6 already settled) are covered by one frame at 8.
    assert ledger.settle([8, 7, 5]) == (8, [])
    # Every lower tag is settled, so even a lone tag may go as `multiple`.
    assert ledger.settle([9]) == (9, [])
    assert len(ledger) == 1
    assert 10 in ledger


class _RecordingChannel:
    """Stands in for an aiormq channel: records the settle frames written."""

    publisher_confirms = False
    is_closed = False

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(
        self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> None:
        self.frames.append(("requeue", tag, multiple))


async def test_settles_within_one_loop_turn_coalesce_into_the_fewest_frames_in_order() -> None:
    from tidings.channels.rabbitmq._link import ACK, REQUEUE, Link, Receipt

    recorder = _RecordingChannel()
    link = Link(recorder, recorder, recorder)  # type: ignore[arg-type]
    receipts = {tag: Receipt(link, tag) for tag in range(1, 11)}
    for tag in receipts:
        link.ledger.add(tag)

    # As concurrent handlers would: each acks its own message.
    for tag in (2, 1, 3, 4):
        link.settle([receipts[tag]], ACK)
    link.settle([receipts[6]], ACK)  # 5 is still being handled: 6 cannot be covered yet
    link.settle([receipts[5]], REQUEUE)
    link.settle([receipts[8], receipts[7]], ACK)
    link.settle([receipts[4]], ACK)  # settled already: nothing more
    await link.flush()

    assert recorder.frames == [
        ("ack", 4, True),
        ("ack", 6, False),
        ("requeue", 5, True),
        ("ack", 8, True),
    ]
    assert len(link.ledger) == 2


# -- against the broker ----------------------------------------------------------------------------


@rabbitmq
async def test_acks_never_cover_a_message_that_was_not_acked(open_channel: OpenChannel) -> None:
    channel = await open_channel(prefetch=50)
    name = channel.name
    await channel.send([envelope(n) for n in range(10)])
    received = sorted(await drain(channel, 10), key=number)
    assert [number(d) for d in received] == list(range(10))

    # Out of order and in pieces, leaving 5 unacked: no `multiple` frame may take 5 with it.
    await channel.ack(received[7:])
    await channel.ack(received[:5])
    await channel.ack([received[6]])
    await channel.close()

    again = await open_channel(name)
    redelivered = await drain(again, 10, timeout=1.5)

    assert [number(d) for d in redelivered] == [5]
    assert redelivered[0].delivery_count == 2
    await again.ack(redelivered)


@rabbitmq
async def test_many_distinct_delays_use_only_the_fixed_delay_queues_and_arrive_on_time(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    declared = await queue_names(channel.name)
    assert len(declared) == 1 + LEVELS

    delays = [round(0.1 * step, 1) for step in range(1, 31)]  # 0.1 s ... 3.0 s
    now = time.time()
    due = {n: now + delay for n, delay in enumerate(delays)}
    await channel.send([envelope(n, **{h.DELIVER_AT: repr(at)}) for n, at in due.items()])

    arrivals: dict[int, float] = {}
    deadline = time.monotonic() + 6.0
    while len(arrivals) < len(delays) and time.monotonic() < deadline:
        batch = await channel.receive(30, timeout=0.05)
        arrived = time.time()
        for delivery in batch:
            arrivals.setdefault(number(delivery), arrived)
        await channel.ack(batch)

    assert sorted(arrivals) == list(range(len(delays)))
    for n, arrived in arrivals.items():
        assert due[n] <= arrived <= due[n] + 0.5, (delays[n], arrived - due[n])
    assert await queue_names(channel.name) == declared


@rabbitmq
async def test_a_message_that_reaches_the_queue_before_it_is_due_is_held_back_again(
    open_channel: OpenChannel, rabbitmq_url: str
) -> None:
    # A delay longer than one pass of the cascade, or a sender whose clock runs ahead, lands in the
    # work queue early; the channel must delay it again rather than hand it out.
    channel = await open_channel()
    due = time.time() + 1.0
    async with aiormq.connect(rabbitmq_url) as connection:
        raw = await connection.channel()
        await raw.basic_publish(
            b'{"n": 1}',
            routing_key=channel.name,
            properties=Basic.Properties(
                delivery_mode=2, headers={h.MESSAGE_ID: "m-1", h.DELIVER_AT: repr(due)}
            ),
        )

    assert await channel.receive(10, timeout=0.7) == []
    received = await drain(channel, 1, timeout=3.0)

    assert [number(d) for d in received] == [1]
    assert due <= time.time() <= due + 0.5
    assert received[0].envelope.headers == {h.MESSAGE_ID: "m-1", h.DELIVER_AT: repr(due)}
    await channel.ack(received)


@rabbitmq
async def test_headers_travel_as_one_readable_amqp_header_and_other_producers_headers_are_taken_as_they_are(
    open_channel: OpenChannel, rabbitmq_url: str
) -> None:
    channel = await open_channel()
    await channel.send([envelope(1, tenant="acme")])
    async with aiormq.connect(rabbitmq_url) as connection:
        raw = await connection.channel()
        got = await raw.basic_get(channel.name, no_ack=True)
        assert got.header.properties.headers == {"tidings.headers": '{"tidings.id":"m-1","tenant":"acme"}'}
        for table in ({h.MESSAGE_ID: "m-2"}, {"tidings.headers": "not json", h.MESSAGE_ID: "m-3"}):
            await raw.basic_publish(
                b'{"n": 2}', routing_key=channel.name, properties=Basic.Properties(headers=table)
            )

    received = await drain(channel, 2, timeout=3.0)

    assert [d.envelope.headers for d in received] == [
        {h.MESSAGE_ID: "m-2"},
        {"tidings.headers": "not json", h.MESSAGE_ID: "m-3"},
    ]
    await channel.ack(received)


@rabbitmq
async def test_a_delayed_message_keeps_its_priority_and_headers(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    due = repr(time.time() + 0.3)
    await channel.send([envelope(1, **{h.DELIVER_AT: due, h.PRIORITY: "7", "tenant": "acme"})])

    received = await drain(channel, 1, timeout=3.0)

    assert received[0].envelope.headers == {
        h.MESSAGE_ID: "m-1",
        h.DELIVER_AT: due,
        h.PRIORITY: "7",
        "tenant": "acme",
    }
    await channel.ack(received)


@rabbitmq
async def test_priorities_beyond_the_queue_maximum_count_as_the_maximum(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(max_priority=3)
    await channel.send(
        [
            envelope(1, **{h.PRIORITY: "-4"}),
            envelope(2, **{h.PRIORITY: "50"}),
            envelope(3, **{h.PRIORITY: "2"}),
        ]
    )
    await asyncio.sleep(0.2)

    received = await drain(channel, 3)

    assert [number(d) for d in received] == [2, 3, 1]
    await channel.ack(received)


@rabbitmq
async def test_a_message_past_its_time_to_live_expires_in_the_broker(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    await channel.send([envelope(1, **{h.EXPIRES_AT: repr(time.time() + 0.2)}), envelope(2)])
    await asyncio.sleep(0.6)

    received = await drain(channel, 2, timeout=1.0)

    assert [number(d) for d in received] == [2]
    await channel.ack(received)
    assert await channel.depth() == 0


@rabbitmq
async def test_depth_counts_messages_held_by_this_consumer(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    await channel.send([envelope(n) for n in range(4)])
    received = await drain(channel, 2)

    assert await channel.depth() == 4
    await channel.ack(received)
    assert await channel.depth() == 2


@rabbitmq
async def test_a_send_to_a_deleted_queue_fails_with_the_messages_not_taken(
    open_channel: OpenChannel, rabbitmq_url: str
) -> None:
    channel = await open_channel()
    async with aiormq.connect(rabbitmq_url) as connection:
        raw = await connection.channel()
        await raw.queue_delete(channel.name)

    with pytest.raises(PublishFailed) as failure:
        await channel.send([envelope(1), envelope(2)])

    assert [e.message_id for e in failure.value.envelopes] == ["m-1", "m-2"]


@rabbitmq
async def test_an_existing_queue_with_other_settings_is_a_configuration_error(
    rabbitmq_url: str,
) -> None:
    name = f"it-conflict-{time.time_ns()}"
    async with aiormq.connect(rabbitmq_url) as connection:
        raw = await connection.channel()
        await raw.queue_declare(name, durable=True)
    channel = RabbitMQChannel(name, url=rabbitmq_url)
    try:
        with pytest.raises(ConfigurationError, match=name):
            await channel.connect(environment())
    finally:
        await delete_topology(rabbitmq_url, [name])


@rabbitmq
async def test_a_delayed_nack_publishes_one_copy_and_acks_the_original(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(lease_seconds=1.0)
    await channel.send([envelope(1)])
    first = await drain(channel, 1)

    await channel.nack(first, delay=0.5)
    # The original is settled: neither its lease nor a later ack brings a second copy.
    await channel.ack(first)
    again = await drain(channel, 1, timeout=3.0)
    await channel.ack(again)

    assert [number(d) for d in again] == [1]
    assert await channel.receive(10, timeout=1.5) == []
    assert await channel.depth() == 0


@rabbitmq
async def test_a_body_larger_than_one_frame_goes_out_in_a_batch_and_comes_back_whole(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    large = Envelope(bytes(range(256)) * 4096, {h.MESSAGE_ID: "large"})  # 1 MiB, many frames
    await channel.send([envelope(1), large, envelope(2)])

    received = await drain(channel, 3)

    assert sorted(d.envelope.message_id for d in received) == ["large", "m-1", "m-2"]
    (whole,) = [d for d in received if d.envelope.message_id == "large"]
    assert whole.envelope.body == large.body
    await channel.ack(received)


@rabbitmq
async def test_without_batched_writes_sends_are_still_confirmed_and_refusals_reported(
    open_channel: OpenChannel, rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fallback for an aiormq without the bookkeeping batched writes rely on.
    monkeypatch.setattr("tidings.channels.rabbitmq._link.batches_supported", lambda _: False)
    channel = await open_channel()
    await channel.send([envelope(n) for n in range(20)])

    received = await drain(channel, 20)
    await channel.ack(received)
    assert sorted(number(d) for d in received) == list(range(20))

    # A channel that only sends (a consuming one would see its consumer cancelled, reconnect and
    # declare the queue again).
    sender = await open_channel()
    async with aiormq.connect(rabbitmq_url) as connection:
        raw = await connection.channel()
        await raw.queue_delete(sender.name)
    with pytest.raises(PublishFailed):
        await sender.send([envelope(1)])


@rabbitmq
async def test_a_consumer_whose_queue_was_deleted_declares_it_again_and_carries_on(
    open_channel: OpenChannel, rabbitmq_url: str
) -> None:
    channel = await open_channel()
    assert await channel.receive(10, timeout=0.2) == []
    async with aiormq.connect(rabbitmq_url) as connection:
        raw = await connection.channel()
        await raw.queue_delete(channel.name)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            await channel.send([envelope(1)])
            break
        except PublishFailed:
            await asyncio.sleep(0.1)  # not declared again yet
    received = await drain(channel, 1, timeout=5.0)

    assert [number(d) for d in received] == [1]
    await channel.ack(received)


@rabbitmq
async def test_a_closed_channel_connects_again_and_finds_its_messages(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    await channel.send([envelope(1), envelope(2)])
    held = await drain(channel, 2)
    await channel.ack(held[:1])
    await channel.close()

    await channel.connect(environment())
    again = await drain(channel, 1, timeout=3.0)

    assert [number(d) for d in again] == [number(held[1])]
    await channel.ack(again)
    assert await channel.depth() == 0
