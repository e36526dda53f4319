"""The channel contract, proven the same way on every channel kind.

Timing tests use real time with short delays, so that brokers and the in-memory channel are held to
exactly the same promises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels.base import Channel, ChannelEnvironment, Delivery

from .kinds import ChannelFactory


def envelope(n: int, **headers: str) -> Envelope:
    return Envelope(
        f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", "tenant": "acme", h.ENDPOINT: "ep", **headers}
    )


def due_in(seconds: float) -> dict[str, str]:
    return {h.DELIVER_AT: repr(time.time() + seconds)}


@asynccontextmanager
async def connected(factory: ChannelFactory, **options: float) -> AsyncIterator[Channel]:
    channel = factory.new(**options)
    await channel.connect(
        ChannelEnvironment(app_name="conformance", clock=SystemClock(), database=factory.database)
    )
    try:
        await channel.purge()
        yield channel
    finally:
        await channel.purge()
        await channel.close()


async def receive_all(channel: Channel, count: int, timeout: float = 10.0) -> list[Delivery]:
    """Receive until `count` deliveries arrived or `timeout` passed."""
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(deliveries) < count and time.monotonic() < deadline:
        deliveries += await channel.receive(count - len(deliveries), timeout=0.5)
    return deliveries


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [int(d.envelope.body.decode().split(":")[1].rstrip("}")) for d in deliveries]


async def test_a_sent_batch_comes_back_with_body_and_headers_unchanged(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory) as channel:
        sent = [envelope(n) for n in range(3)]
        await channel.send(sent)

        received = await receive_all(channel, 3)

        assert sorted(numbers(received)) == [0, 1, 2]
        for delivery in received:
            original = sent[numbers([delivery])[0]]
            assert delivery.envelope.body == original.body
            assert delivery.envelope.headers == original.headers


async def test_an_acked_message_is_gone_for_good(channel_factory: ChannelFactory) -> None:
    async with connected(channel_factory, lease_seconds=1.0) as channel:
        await channel.send([envelope(1)])
        received = await receive_all(channel, 1)
        await channel.ack(received)

        await asyncio.sleep(1.5)

        assert await channel.receive(10, timeout=0.5) == []
        assert await channel.depth() == 0


async def test_a_nacked_message_is_received_again(channel_factory: ChannelFactory) -> None:
    async with connected(channel_factory) as channel:
        await channel.send([envelope(1)])
        first = await receive_all(channel, 1)

        await channel.nack(first)
        again = await receive_all(channel, 1)

        assert numbers(again) == [1]
        assert again[0].delivery_count >= 1
        await channel.ack(again)


async def test_a_message_whose_lease_runs_out_is_delivered_again(
    channel_factory: ChannelFactory,
) -> None:
    # A consumer that dies before acking never nacks either: only the lease brings the message back.
    async with connected(channel_factory, lease_seconds=1.0) as channel:
        await channel.send([envelope(7)])
        first = await receive_all(channel, 1)
        assert numbers(first) == [7]

        assert await channel.receive(10, timeout=0.3) == []
        again = await receive_all(channel, 1, timeout=6.0)

        assert numbers(again) == [7]
        await channel.ack(again)


async def test_an_extended_lease_keeps_the_message_from_being_redelivered(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory, lease_seconds=1.0) as channel:
        await channel.send([envelope(1)])
        received = await receive_all(channel, 1)

        await channel.extend_lease(received, 4.0)

        assert await channel.receive(10, timeout=2.0) == []
        await channel.ack(received)


async def test_a_delayed_message_arrives_when_due_and_not_before(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory) as channel:
        started = time.time()
        await channel.send([envelope(1, **due_in(1.5))])

        assert await channel.receive(10, timeout=0.5) == []
        received = await receive_all(channel, 1, timeout=5.0)
        arrived = time.time() - started

        assert numbers(received) == [1]
        assert 1.4 <= arrived <= 1.5 + 0.5
        await channel.ack(received)


async def test_a_short_delay_is_not_held_behind_a_longer_one(channel_factory: ChannelFactory) -> None:
    async with connected(channel_factory) as channel:
        started = time.time()
        await channel.send([envelope(1, **due_in(6.0))])
        await channel.send([envelope(2, **due_in(0.5))])

        received = await receive_all(channel, 1, timeout=3.0)

        assert numbers(received) == [2]
        assert time.time() - started < 2.5
        await channel.ack(received)


async def test_a_nack_with_delay_hides_the_message_until_the_delay_passed(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory) as channel:
        await channel.send([envelope(1)])
        first = await receive_all(channel, 1)

        await channel.nack(first, delay=1.5)

        assert await channel.receive(10, timeout=0.8) == []
        again = await receive_all(channel, 1, timeout=5.0)
        assert numbers(again) == [1]
        await channel.ack(again)


async def test_due_messages_come_highest_priority_first_where_the_channel_orders_by_priority(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory) as channel:
        await channel.send([envelope(n, **{h.PRIORITY: str(p)}) for n, p in [(1, 0), (2, 5), (3, 9), (4, 5)]])
        await asyncio.sleep(0.2)

        received = await receive_all(channel, 4)
        if not channel.capabilities.priority:
            # No ordering promised (the app refuses @priority on such channels), but nothing is lost.
            assert sorted(numbers(received)) == [1, 2, 3, 4]
            await channel.ack(received)
            return

        assert numbers(received)[0] == 3
        assert numbers(received)[-1] == 1
        await channel.ack(received)


async def test_receive_returns_nothing_after_its_timeout_when_the_channel_is_empty(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory) as channel:
        started = time.monotonic()

        assert await channel.receive(10, timeout=0.5) == []

        assert 0.3 <= time.monotonic() - started <= 3.0


async def test_a_waiting_receive_wakes_up_when_a_message_is_sent(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory) as channel:
        waiting = asyncio.ensure_future(channel.receive(10, timeout=5.0))
        await asyncio.sleep(0.2)
        started = time.monotonic()

        await channel.send([envelope(1)])
        received = await waiting

        assert numbers(received) == [1]
        assert time.monotonic() - started < 1.5
        await channel.ack(received)


async def test_many_messages_are_each_delivered_once_across_batches(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory) as channel:
        await channel.send([envelope(n) for n in range(250)])

        received = await receive_all(channel, 250, timeout=20.0)
        await channel.ack(received)

        assert sorted(numbers(received)) == list(range(250))
        assert await channel.receive(10, timeout=0.3) == []


async def test_depth_counts_waiting_messages_and_purge_removes_them(
    channel_factory: ChannelFactory,
) -> None:
    async with connected(channel_factory) as channel:
        await channel.send([envelope(n) for n in range(5)])
        await channel.send([envelope(9, **due_in(30))])

        assert await channel.depth() == 6
        await channel.purge()

        assert await channel.depth() == 0
        assert await channel.receive(10, timeout=0.3) == []
