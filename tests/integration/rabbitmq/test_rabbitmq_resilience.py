"""The RabbitMQ channel loses no message when its connection is killed or the broker restarts."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.base import Delivery
from tidings.channels.rabbitmq import RabbitMQChannel

from .conftest import OpenChannel, PrivateNode, connections_named, rabbitmqctl

pytestmark = pytest.mark.rabbitmq


def envelope(n: int, **headers: str) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", **headers})


def number(delivery: Delivery) -> int:
    return int(delivery.envelope.body.decode().split(":")[1].rstrip("}"))


async def wait_for_connection(connection_name: str, node: str | None = None) -> list[str]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = await connections_named(connection_name, node=node)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"no connection named {connection_name!r} came back")


async def test_a_drain_loses_no_message_when_the_broker_closes_the_connection(
    open_channel: OpenChannel,
) -> None:
    app_name = f"it-{uuid.uuid4().hex[:8]}"
    channel = await open_channel(app_name=app_name, prefetch=100)
    connection_name = f"tidings {app_name} {channel.name}"
    total = 600
    await channel.send([envelope(n) for n in range(total)])

    seen: dict[int, int] = {}
    held: list[Delivery] = []
    killed_at = None
    deadline = time.monotonic() + 60

    def done() -> bool:
        # Everything seen, and the batch held across the kill seen again.
        return len(seen) == total and all(seen[number(d)] >= 2 for d in held)

    while not done() and time.monotonic() < deadline:
        batch = await channel.receive(50, timeout=0.5)
        for delivery in batch:
            seen[number(delivery)] = seen.get(number(delivery), 0) + 1
        if killed_at is None and len(seen) >= 200:
            # Kill the connection while this batch is leased and more are prefetched; its late ack
            # must not reach the new connection, and the broker must hand all of it out again.
            (killed_at,) = await connections_named(connection_name)
            await rabbitmqctl("close_connection", killed_at, "test: connection killed mid-drain")
            held = batch
        await channel.ack(batch)

    assert killed_at is not None
    assert sorted(seen) == list(range(total))
    assert all(seen[number(d)] >= 2 for d in held)
    assert await wait_for_connection(connection_name) != [killed_at]

    # The channel carries on on its new connection, for sending and receiving alike.
    await channel.send([envelope(total)])
    again = await channel.receive(10, timeout=5.0)
    assert [number(d) for d in again] == [total]
    await channel.ack(again)
    assert await channel.depth() == 0


@pytest.mark.slow
async def test_messages_survive_a_broker_restart_and_sends_wait_for_it_to_come_back(
    open_channel: OpenChannel, private_node: PrivateNode
) -> None:
    app_name = f"it-{uuid.uuid4().hex[:8]}"
    channel = await open_channel(url=private_node.url, app_name=app_name)
    await channel.send([envelope(n) for n in range(50)])
    await channel.send([envelope(99, **{h.DELIVER_AT: repr(time.time() + 1.0)})])
    first = await channel.receive(10, timeout=5.0)
    assert first

    await private_node.stop_app()
    # Sent while the broker is down: the send waits for the reconnect and is confirmed after it.
    sending = asyncio.ensure_future(channel.send([envelope(n) for n in range(50, 60)]))
    await asyncio.sleep(1.0)
    assert not sending.done()
    await channel.ack(first)  # acks on the dead connection are dropped; those messages come back
    await private_node.start_app()
    await asyncio.wait_for(sending, timeout=30)

    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen) < 61 and time.monotonic() < deadline:
        batch = await channel.receive(100, timeout=0.5)
        seen.update(number(d) for d in batch)
        await channel.ack(batch)

    assert seen == {*range(60), 99}
    assert await channel.depth() == 0


async def test_a_channel_that_cannot_reach_the_broker_says_so(unused_tcp_port: int) -> None:
    from tidings.exceptions import ChannelUnavailable

    from .conftest import environment

    channel = RabbitMQChannel("orders", url=f"amqp://guest:secret@127.0.0.1:{unused_tcp_port}/")

    with pytest.raises(ChannelUnavailable, match=r"guest:\*\*\*@") as failure:
        await channel.connect(environment())

    assert "secret" not in str(failure.value)


async def test_sends_in_flight_when_the_connection_is_killed_are_published_again(
    open_channel: OpenChannel,
) -> None:
    app_name = f"it-{uuid.uuid4().hex[:8]}"
    channel = await open_channel(app_name=app_name)
    connection_name = f"tidings {app_name} {channel.name}"
    (original,) = await connections_named(connection_name)

    killing = asyncio.ensure_future(
        rabbitmqctl("close_connection", original, "test: connection killed mid-send")
    )
    sent = 0
    while not killing.done() or sent < 1000:
        # Every send returns only once the broker confirmed all of it, on whichever connection.
        await channel.send([envelope(n) for n in range(sent, sent + 250)])
        sent += 250
    await killing

    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(seen) < sent and time.monotonic() < deadline:
        batch = await channel.receive(250, timeout=0.5)
        seen.update(number(d) for d in batch)
        await channel.ack(batch)

    assert seen == set(range(sent))
    assert await wait_for_connection(connection_name) != [original]


@pytest.mark.slow
async def test_closing_the_channel_ends_a_send_waiting_for_the_broker(
    open_channel: OpenChannel, private_node: PrivateNode
) -> None:
    from tidings.exceptions import ChannelUnavailable

    channel = await open_channel(url=private_node.url)
    await private_node.stop_app()
    try:
        sending = asyncio.ensure_future(channel.send([envelope(1)]))
        await asyncio.sleep(0.5)
        assert not sending.done()

        await channel.close()

        with pytest.raises(ChannelUnavailable):
            await asyncio.wait_for(sending, timeout=2.0)
    finally:
        await private_node.start_app()
