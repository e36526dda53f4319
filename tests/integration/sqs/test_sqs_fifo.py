"""FIFO queues: order within a message group, deduplication ids, and delays held by visibility."""

from __future__ import annotations

import time

import pytest

from tidings import headers as h
from tidings.channels.sqs import ORDERING_KEY

from ._helpers import due_at, message, number, numbers, receive_all
from .conftest import OpenChannel

pytestmark = pytest.mark.sqs


def keyed(n: int, key: str, **headers: str) -> dict[str, str]:
    return {ORDERING_KEY: key, h.MESSAGE_ID: f"m-{n}", **headers}


async def test_messages_of_one_group_come_in_the_order_they_were_sent(open_channel: OpenChannel) -> None:
    channel = await open_channel(fifo=True)
    for first in range(0, 30, 10):
        await channel.send([message(n, **keyed(n, "order-1")) for n in range(first, first + 10)])

    handled: list[int] = []
    while len(handled) < 30:
        received = await channel.receive(10, timeout=2.0)
        assert received, "a group with messages left delivered nothing"
        handled += numbers(received)
        await channel.ack(received)

    assert handled == list(range(30))


async def test_a_message_in_flight_holds_back_its_group_but_not_the_others(open_channel: OpenChannel) -> None:
    channel = await open_channel(fifo=True)
    await channel.send([message(1, **keyed(1, "a"))])
    first = await receive_all(channel, 1)
    await channel.send([message(2, **keyed(2, "a")), message(3, **keyed(3, "b"))])

    assert numbers(await receive_all(channel, 1)) == [3]
    assert await channel.receive(10, timeout=1.0) == []

    await channel.ack(first)
    assert numbers(await receive_all(channel, 1)) == [2]


async def test_without_an_ordering_key_the_endpoint_is_the_group(open_channel: OpenChannel) -> None:
    channel = await open_channel(fifo=True)
    await channel.send([message(n) for n in range(5)])

    handled: list[int] = []
    while len(handled) < 5:
        received = await channel.receive(10, timeout=2.0)
        handled += numbers(received)
        await channel.ack(received)

    assert handled == list(range(5))


async def test_the_same_copy_sent_twice_is_delivered_once_but_a_retry_is_not_taken_for_a_duplicate(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(fifo=True)
    await channel.send([message(1, **keyed(1, "a"))])
    await channel.send([message(1, **keyed(1, "a"))])  # a producer retrying after a lost reply
    await channel.send([message(1, **keyed(1, "a", **{h.ATTEMPT: "2"}))])  # a delayed retry

    handled = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        received = await channel.receive(10, timeout=0.5)
        handled += [(number(delivery), delivery.envelope.attempt) for delivery in received]
        await channel.ack(received)  # at once: a delivery in flight holds back its group

    assert handled == [(1, 1), (1, 2)]


async def test_a_delayed_message_arrives_on_time_and_holds_back_only_its_own_group(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(fifo=True)
    sent = time.time()
    await channel.send(
        [
            message(1, **keyed(1, "a", **due_at(sent + 3.5))),
            message(2, **keyed(2, "a")),
            message(3, **keyed(3, "b")),
        ]
    )

    arrivals: list[tuple[int, float]] = []
    while len(arrivals) < 3 and time.time() - sent < 10:
        received = await channel.receive(10, timeout=0.5)
        arrivals += [(number(d), time.time() - sent) for d in received]
        await channel.ack(received)

    assert [n for n, _ in arrivals] == [3, 1, 2]
    assert arrivals[0][1] < 1.0
    assert 3.5 <= arrivals[1][1] <= 4.0


async def test_a_fraction_of_a_second_delay_on_a_fifo_queue_arrives_within_half_a_second(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(fifo=True)
    sent = time.time()
    await channel.send([message(1, **keyed(1, "a", **due_at(sent + 1.5)))])

    received = await receive_all(channel, 1, timeout=5.0)

    assert 1.5 <= time.time() - sent <= 2.0
    await channel.ack(received)


async def test_a_nack_with_delay_on_a_fifo_queue_keeps_the_group_in_order(open_channel: OpenChannel) -> None:
    channel = await open_channel(fifo=True)
    await channel.send([message(1, **keyed(1, "a")), message(2, **keyed(2, "a"))])
    first = await receive_all(channel, 1)

    await channel.nack(first, delay=1.0)
    again = await receive_all(channel, 1, timeout=5.0)

    assert numbers(first) == numbers(again) == [1]
    await channel.ack(again)
    assert numbers(await receive_all(channel, 1)) == [2]
