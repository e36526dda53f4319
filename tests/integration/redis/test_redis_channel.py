"""The Redis channel under load and in the corners the shared conformance suite does not reach."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels import redis as redis_package
from tidings.channels.base import ChannelEnvironment, Delivery
from tidings.channels.redis import RedisChannel
from tidings.exceptions import ChannelUnavailable, DriverMissing

pytestmark = pytest.mark.redis

OpenChannel = Callable[..., Awaitable[RedisChannel]]


def environment() -> ChannelEnvironment:
    return ChannelEnvironment(app_name="redis-integration", clock=SystemClock())


def message(n: int, **headers: str) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", h.ENDPOINT: "ep", **headers})


def number(delivery: Delivery) -> int:
    return int(delivery.envelope.body.decode().split(":")[1].rstrip("}"))


async def test_concurrent_receivers_get_each_message_once_when_many_become_due_together(
    open_channel: OpenChannel,
) -> None:
    producer = await open_channel()
    consumers = [await open_channel() for _ in range(4)]
    total, ready_now = 1600, 400
    due = time.time() + 1.5
    await producer.send([message(n) for n in range(ready_now)])
    delayed = [message(n, **{h.DELIVER_AT: repr(due)}) for n in range(ready_now, total)]
    for first in range(0, len(delayed), 200):
        await producer.send(delayed[first : first + 200])
    received: list[tuple[int, int, float]] = []

    async def consume(channel: RedisChannel) -> None:
        while len(received) < total:
            deliveries = await channel.receive(50, timeout=0.5)
            arrived = time.time()
            received.extend((number(d), d.delivery_count, arrived) for d in deliveries)
            await channel.ack(deliveries)

    await asyncio.wait_for(asyncio.gather(*(consume(c) for c in consumers)), timeout=60)

    assert sorted(n for n, _, _ in received) == list(range(total))
    assert {count for _, count, _ in received} == {1}
    assert all(arrived >= due for n, _, arrived in received if n >= ready_now)
    for channel in consumers:
        assert await channel.receive(10, timeout=0.2) == []
    assert await producer.depth() == 0


async def test_a_high_priority_message_that_becomes_due_overtakes_waiting_low_priority_ones(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    await channel.send([message(n, **{h.PRIORITY: "1"}) for n in range(5)])
    await channel.send([message(99, **{h.PRIORITY: "7", h.DELIVER_AT: repr(time.time() + 0.5)})])
    await channel.send([message(98, **{h.PRIORITY: "-3"})])
    await asyncio.sleep(0.7)

    received = await channel.receive(10, timeout=1.0)

    assert [number(d) for d in received] == [99, 0, 1, 2, 3, 4, 98]
    await channel.ack(received)


async def test_a_consumer_whose_lease_ran_out_can_neither_ack_nor_nack_the_redelivered_message(
    open_channel: OpenChannel,
) -> None:
    slow, fast = await open_channel(lease_seconds=0.5), await open_channel(lease_seconds=30.0)
    await slow.send([message(1)])
    [stale] = await slow.receive(1, timeout=1.0)
    await asyncio.sleep(0.7)
    [current] = await fast.receive(1, timeout=1.0)
    assert (stale.delivery_count, current.delivery_count) == (1, 2)

    await slow.ack([stale])
    await slow.nack([stale])
    await slow.extend_lease([stale], 60.0)

    assert await fast.depth() == 1
    assert await fast.receive(10, timeout=0.3) == []
    await fast.ack([current])
    assert await fast.depth() == 0


async def test_once_every_message_is_acked_the_channel_leaves_no_key_behind(
    open_channel: OpenChannel, redis_url: str, key_prefix: str
) -> None:
    from redis.asyncio import Redis

    channel = await open_channel(lease_seconds=0.3)
    due_soon = message(3, **{h.DELIVER_AT: repr(time.time() + 0.2)})
    await channel.send([message(n) for n in range(3)] + [due_soon])
    first = await channel.receive(3, timeout=1.0)
    await channel.nack(first[:1])  # back to its lane under a new name
    await asyncio.sleep(0.4)  # the other two leases run out, the delayed message becomes due

    again = await channel.receive(10, timeout=1.0)
    await channel.ack(again)

    assert sorted(number(d) for d in again) == [0, 1, 2, 3]
    assert sorted(d.delivery_count for d in again) == [1, 2, 2, 2]
    client = Redis.from_url(redis_url)
    try:
        assert [key async for key in client.scan_iter(match=f"{key_prefix}:*")] == []
    finally:
        await client.aclose()


async def cancel_after(steps: int, receiving: asyncio.Task[list[Delivery]], channel: RedisChannel) -> None:
    """Cancel a receive after `steps` turns of the loop."""
    for _ in range(steps):
        await asyncio.sleep(0)
    receiving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        # Too late to cancel: the receive finished, and its caller gives the messages back.
        await channel.nack(await receiving)


async def test_a_receive_cancelled_while_claiming_gives_its_messages_back_at_once(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(lease_seconds=30.0)
    for steps in range(8):
        await channel.send([message(n) for n in range(5)])
        await cancel_after(steps, asyncio.create_task(channel.receive(5, timeout=1.0)), channel)

        received = await channel.receive(5, timeout=1.0)

        assert sorted(number(d) for d in received) == list(range(5))
        await channel.ack(received)
        assert await channel.depth() == 0


async def test_a_receive_cancelled_while_waiting_in_the_server_ends_at_once_and_takes_nothing(
    open_channel: OpenChannel,
) -> None:
    channel, other = await open_channel(), await open_channel()
    waiting = asyncio.create_task(channel.receive(5, timeout=10.0))
    await asyncio.sleep(0.3)
    started = time.monotonic()

    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting

    assert time.monotonic() - started < 0.5
    await other.send([message(1)])
    received = await other.receive(5, timeout=1.0)
    assert [number(d) for d in received] == [1]
    assert received[0].delivery_count == 1  # no one claimed it before


async def test_a_message_arriving_as_a_waiting_receive_is_cancelled_is_given_back_at_once(
    open_channel: OpenChannel,
) -> None:
    channel, sender = await open_channel(lease_seconds=30.0), await open_channel()
    for steps in range(6):
        waiting = asyncio.create_task(channel.receive(5, timeout=5.0))
        await asyncio.sleep(0.1)
        await sender.send([message(steps)])
        await cancel_after(steps, waiting, channel)

        received = await sender.receive(5, timeout=1.0)

        assert [number(d) for d in received] == [steps]
        await sender.ack(received)
        assert await channel.depth() == 0


async def test_closing_the_channel_ends_a_waiting_receive_at_once(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    assert await channel.receive(1, timeout=0.2) == []
    waiting = asyncio.create_task(channel.receive(1, timeout=10.0))
    await asyncio.sleep(0.2)
    started = time.monotonic()

    await channel.close()

    assert await asyncio.wait_for(waiting, timeout=2.0) == []
    assert time.monotonic() - started < 1.0


async def test_batches_beyond_the_scripts_slice_size_go_through_whole(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    total = 4500
    await channel.send([message(n) for n in range(total)])

    first = await channel.receive(total, timeout=2.0)
    await channel.nack(first)
    again = await channel.receive(total, timeout=2.0)

    assert len(first) == total
    assert sorted(number(d) for d in again) == list(range(total))
    assert {d.delivery_count for d in again} == {2}
    await channel.ack(again)
    assert await channel.depth() == 0


async def test_priority_headers_in_any_spelling_share_one_lane(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    await channel.send([message(n, **{h.PRIORITY: p}) for n, p in [(1, "5"), (2, "+5"), (3, "05")]])
    await channel.send([message(4, **{h.PRIORITY: "6"})])

    received = await channel.receive(10, timeout=1.0)

    assert [number(d) for d in received] == [4, 1, 2, 3]
    assert [d.envelope.headers[h.PRIORITY] for d in received] == ["6", "5", "+5", "05"]
    await channel.ack(received)


async def test_connecting_to_a_server_that_is_not_there_names_the_url_but_not_the_password() -> None:
    channel = RedisChannel("nowhere", url="redis://user:s3cret@127.0.0.1:1/0")

    with pytest.raises(ChannelUnavailable) as raised:
        await channel.connect(environment())

    assert "127.0.0.1:1" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert "s3cret" not in repr(channel)
    assert raised.value.channel == "nowhere"


def test_without_redis_py_the_constructor_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.delitem(sys.modules, "tidings.channels.redis._driver", raising=False)
    monkeypatch.delattr(redis_package, "_driver", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)

    with pytest.raises(DriverMissing, match=r"tidings\[redis\]"):
        RedisChannel("orders")


def test_importing_the_channel_package_does_not_import_redis_py() -> None:
    code = (
        "import sys, tidings, tidings.channels.redis\nassert 'redis' not in sys.modules, 'redis imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
