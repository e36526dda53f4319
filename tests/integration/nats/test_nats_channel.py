"""The NATS channel in the corners the shared conformance suite does not reach."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import nats
import pytest
from nats.js import api
from nats_support import (
    OpenChannel,
    drain,
    due_in,
    environment,
    free_port,
    message,
    number,
    receive_unacked,
)

from tidings import App, asynchronous, event_handler
from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.nats import NatsChannel
from tidings.exceptions import ChannelUnavailable, ConfigurationError, DriverMissing, PublishFailed

pytestmark = pytest.mark.nats


@dataclass
class Tick:
    n: int


async def test_a_delayed_retry_does_not_hold_up_the_messages_behind_it(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    await channel.send([message(n) for n in range(50)])
    first = await channel.receive(10, timeout=2.0)
    assert len(first) == 10
    started = time.monotonic()

    await channel.nack(first, delay=2.0)
    rest = await drain(channel, set(range(10, 50)), timeout=5.0)
    rest_done = time.monotonic() - started
    retried = await drain(channel, {number(d) for d in first}, timeout=6.0)
    retried_done = time.monotonic() - started

    assert sorted(rest) == list(range(10, 50))
    assert rest_done < 1.5
    assert sorted(retried) == sorted(number(d) for d in first)
    assert 1.9 <= retried_done <= 3.5
    assert await channel.depth() == 0


async def test_delayed_messages_of_many_due_times_each_arrive_on_time_in_due_order(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    delays = {1: 2.5, 2: 0.5, 3: 1.5, 4: 0.0, 5: 1.0}
    sent_at = time.time()
    await channel.send([message(n, **due_in(delay)) for n, delay in delays.items()])

    arrivals: dict[int, float] = {}
    deadline = time.monotonic() + 6
    while len(arrivals) < len(delays) and time.monotonic() < deadline:
        deliveries = await channel.receive(10, timeout=0.5)
        arrivals.update((number(d), time.time() - sent_at) for d in deliveries)
        await channel.ack(deliveries)

    assert sorted(arrivals, key=arrivals.__getitem__) == [4, 2, 5, 3, 1], arrivals
    for n, delay in delays.items():
        assert delay - 0.1 <= arrivals[n] <= delay + 0.5, (n, arrivals[n])


async def test_a_delayed_message_naked_early_by_one_process_is_delivered_to_another_when_due(
    open_channel: OpenChannel,
) -> None:
    early = await open_channel()
    await early.send([message(1, **due_in(1.5))])
    assert await early.receive(10, timeout=0.5) == []  # saw it early, gave it back
    await early.close()

    later = await open_channel()
    received = await drain(later, {1}, timeout=5.0)

    assert received == [1]


async def test_early_deliveries_of_a_delayed_message_do_not_count_as_deliveries(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    await channel.send([message(1, **due_in(0.6))])

    deliveries: list = []
    deadline = time.monotonic() + 5
    while not deliveries and time.monotonic() < deadline:
        deliveries = await channel.receive(10, timeout=0.3)

    assert [d.delivery_count for d in deliveries] == [1]
    await channel.nack(deliveries)
    again = await channel.receive(10, timeout=2.0)
    assert [d.delivery_count for d in again] == [2]
    await channel.ack(again)


async def test_an_extended_lease_outlasting_several_ack_waits_keeps_others_from_the_message(
    open_channel: OpenChannel,
) -> None:
    holder = await open_channel(lease_seconds=1.0)
    rival = await open_channel(lease_seconds=1.0)
    await holder.send([message(1)])
    held = await holder.receive(1, timeout=2.0)
    assert len(held) == 1

    await holder.extend_lease(held, 3.5)
    started = time.monotonic()
    stolen = []
    while time.monotonic() - started < 3.0:
        stolen += await rival.receive(10, timeout=0.5)

    assert stolen == []
    await holder.ack(held)
    assert await holder.depth() == 0


async def test_a_long_handler_keeps_its_message_while_another_worker_waits_for_work(
    nats_url: str, prefix: str
) -> None:
    name = "long-handler"
    runs: list[str] = []

    def build() -> App:
        @asynchronous(name)
        @event_handler(endpoint_id="slow")
        async def slow(event: Tick) -> None:
            runs.append("start")
            await asyncio.sleep(3.5)
            runs.append("done")

        channel = NatsChannel(name, url=nats_url, lease_seconds=1.0, prefix=prefix)
        return App("nats-long-handler", handlers=[slow], channels=[channel])

    first, second = build(), build()
    async with first, second:
        await first.events.publish(Tick(1))
        consumers = [app.consumer(concurrency=1, batch_size=1) for app in (first, second)]
        running = [asyncio.ensure_future(consumer.run()) for consumer in consumers]
        deadline = time.monotonic() + 15
        while runs.count("done") < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # a redelivery would start a second run by now
        for consumer in consumers:
            consumer.stop("test done")
        await asyncio.gather(*running)
        depth = await first.channel(name).depth()

    assert runs == ["start", "done"]
    assert depth == 0


async def test_competing_receivers_share_the_work_and_get_each_message_once(
    open_channel: OpenChannel,
) -> None:
    receivers = [await open_channel() for _ in range(4)]
    total = 1200
    for first in range(0, total, 300):
        await receivers[0].send([message(n) for n in range(first, first + 300)])
    received: list[tuple[int, int]] = []

    async def consume(index: int, channel: NatsChannel) -> None:
        while len(received) < total:
            deliveries = await channel.receive(50, timeout=0.3)
            received.extend((number(d), index) for d in deliveries)
            await channel.ack(deliveries)

    await asyncio.wait_for(asyncio.gather(*(consume(i, c) for i, c in enumerate(receivers))), 60)

    assert sorted(n for n, _ in received) == list(range(total))
    assert len({index for _, index in received}) > 1
    assert await receivers[0].depth() == 0


async def test_acks_are_settled_on_the_server_when_ack_returns(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    await channel.send([message(n) for n in range(500)])
    deliveries = await receive_unacked(channel, 500)

    await channel.ack(deliveries[:499])
    assert await channel.depth() == 1  # no sleep: ack() returned only once JetStream processed them
    await channel.ack(deliveries[499:])
    assert await channel.depth() == 0


async def test_a_cancelled_receive_gives_back_what_arrives_for_it_at_once(open_channel: OpenChannel) -> None:
    waiting = await open_channel(lease_seconds=30.0)
    other = await open_channel(lease_seconds=30.0)
    receiving = asyncio.ensure_future(waiting.receive(10, timeout=5.0))
    await asyncio.sleep(0.3)  # its request now waits on the server
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)

    await other.send([message(1)])
    await asyncio.sleep(0.3)
    started = time.monotonic()
    received = await other.receive(10, timeout=3.0)

    # Not left leased to a receive that is gone until the 30 s lease ends.
    assert [number(d) for d in received] == [1]
    assert time.monotonic() - started < 1.5
    await other.ack(received)


async def test_closing_the_channel_ends_a_waiting_receive(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    receiving = asyncio.ensure_future(channel.receive(10, timeout=10.0))
    await asyncio.sleep(0.3)
    started = time.monotonic()

    await channel.close()

    assert await asyncio.wait_for(receiving, 3) == []
    assert time.monotonic() - started < 2.0


async def test_a_batch_with_a_message_over_the_servers_payload_limit_is_refused_whole(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    huge = Envelope(b"x" * 2_000_000, {h.MESSAGE_ID: "huge", h.ENDPOINT: "ep"})

    with pytest.raises(PublishFailed, match="max_payload") as refused:
        await channel.send([message(1), huge])

    assert refused.value.envelopes[1] is huge
    assert await channel.depth() == 0


async def test_a_closed_channel_connects_again_and_finds_its_messages(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    await channel.send([message(1)])
    await channel.close()

    await channel.connect(environment())
    received = await drain(channel, {1}, timeout=5.0)

    assert received == [1]


async def test_a_stream_deleted_under_a_running_channel_is_declared_again(
    open_channel: OpenChannel, nats_url: str
) -> None:
    channel = await open_channel()
    await channel.send([message(1)])
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().delete_stream(channel.stream)
    finally:
        await client.close()

    await channel.send([message(2)])
    received = await drain(channel, {2}, timeout=10.0)

    assert received == [2]


async def test_a_channel_refuses_a_stream_of_its_name_that_is_not_a_work_queue(
    nats_url: str, prefix: str
) -> None:
    channel = NatsChannel("taken", url=nats_url, prefix=prefix)
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().add_stream(
            name=channel.stream, subjects=[channel.subject], retention=api.RetentionPolicy.LIMITS
        )
        with pytest.raises(ConfigurationError, match="not a work queue"):
            await channel.connect(environment())
    finally:
        await client.close()


async def test_connecting_to_a_server_that_is_not_there_names_the_url() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    channel = NatsChannel("nowhere", url=url)
    started = time.monotonic()

    with pytest.raises(ChannelUnavailable, match=f"127.0.0.1:{url.rsplit(':', 1)[1]}"):
        await channel.connect(environment())

    assert time.monotonic() - started < 5.0


def test_constructing_a_channel_without_nats_py_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)

    with pytest.raises(DriverMissing, match=r"tidings\[nats\]"):
        NatsChannel("orders")


def test_a_dotted_channel_name_gets_a_stream_name_of_its_own() -> None:
    dotted, underscored = NatsChannel("orders.eu"), NatsChannel("orders_eu")

    assert dotted.subject == "tidings.orders.eu"
    assert "." not in dotted.stream
    assert dotted.stream != underscored.stream
