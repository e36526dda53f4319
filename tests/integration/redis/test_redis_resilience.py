"""The Redis channel loses nothing when connections die, the server restarts or a worker is killed."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest
from redis.asyncio import Redis

from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels.base import ChannelEnvironment, Delivery
from tidings.channels.redis import RedisChannel
from tidings.exceptions import ChannelUnavailable

pytestmark = pytest.mark.redis

OpenChannel = Callable[..., Awaitable[RedisChannel]]


class Server(Protocol):
    """What the tests use of the `private_redis` fixture (conftest.RedisServer)."""

    url: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def environment() -> ChannelEnvironment:
    return ChannelEnvironment(app_name="redis-integration", clock=SystemClock())


def message(n: int) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", h.ENDPOINT: "ep"})


def number(delivery: Delivery) -> int:
    return int(delivery.envelope.body.decode().split(":")[1].rstrip("}"))


async def drain(channel: RedisChannel, expected: set[int], timeout: float, handling: float = 0.0) -> set[int]:
    """Receive and ack until every expected message was handled at least once."""
    handled: set[int] = set()
    deadline = time.monotonic() + timeout
    while not expected <= handled and time.monotonic() < deadline:
        deliveries = await channel.receive(100, timeout=0.5)
        await asyncio.sleep(handling)
        handled.update(number(d) for d in deliveries)
        await channel.ack(deliveries)
    return handled


async def test_killing_the_connections_in_the_middle_of_a_drain_loses_no_message(
    private_redis: Server,
) -> None:
    # A private server, so that CLIENT KILL TYPE normal hits nobody else's connections.
    channel = RedisChannel("orders", url=private_redis.url, lease_seconds=2.0)
    await channel.connect(environment())
    admin = Redis.from_url(private_redis.url)
    total = 2000
    killed = 0
    try:
        for first in range(0, total, 100):
            await channel.send([message(n) for n in range(first, first + 100)])

        draining = asyncio.create_task(drain(channel, set(range(total)), timeout=60, handling=0.02))
        while not draining.done():
            await asyncio.sleep(0.05)
            killed += await admin.client_kill_filter(_type="normal", skipme=True)
            killed += await admin.client_kill_filter(_type="pubsub", skipme=True)
        handled = await draining

        assert killed >= 5
        assert handled == set(range(total))
        assert await channel.depth() == 0
    finally:
        await channel.close()
        await admin.aclose()


async def test_after_a_server_restart_leases_and_waiting_messages_are_still_there(
    private_redis: Server,
) -> None:
    channel = RedisChannel("orders", url=private_redis.url, lease_seconds=30.0)
    await channel.connect(environment())
    try:
        await channel.send([message(n) for n in range(300)])
        in_flight = await channel.receive(100, timeout=1.0)
        assert len(in_flight) == 100

        private_redis.stop()
        # Sent while the server is down: the send waits for it to come back.
        sending = asyncio.create_task(channel.send([message(n) for n in range(300, 400)]))
        await asyncio.sleep(1.0)
        assert not sending.done()
        private_redis.start()
        await asyncio.wait_for(sending, timeout=30)

        await channel.ack(in_flight)  # the leases survived the restart
        handled = await drain(channel, set(range(100, 400)), timeout=30)

        assert handled == set(range(100, 400))
        assert await channel.depth() == 0
    finally:
        await channel.close()


async def test_a_server_that_forgot_the_channels_scripts_is_given_them_again(private_redis: Server) -> None:
    channel = RedisChannel("orders", url=private_redis.url)
    await channel.connect(environment())
    admin = Redis.from_url(private_redis.url)
    try:
        await channel.send([message(1)])
        await admin.script_flush()
        await channel.send([message(2)])
        await admin.script_flush()
        received = await channel.receive(10, timeout=1.0)
        await admin.script_flush()
        await channel.ack(received)

        assert sorted(number(d) for d in received) == [1, 2]
        assert await channel.depth() == 0
    finally:
        await channel.close()
        await admin.aclose()


WORKER = """
import asyncio, sys
from tidings._clock import SystemClock
from tidings.channels.base import ChannelEnvironment
from tidings.channels.redis import RedisChannel
from tidings.exceptions import ChannelUnavailable

async def main():
    channel = RedisChannel(sys.argv[1], url=sys.argv[2], lease_seconds=1.5, key_prefix=sys.argv[3])
    await channel.connect(ChannelEnvironment(app_name="worker", clock=SystemClock()))
    deliveries = []
    while len(deliveries) < 3:
        deliveries += await channel.receive(3 - len(deliveries), timeout=5.0)
    print(len(deliveries), flush=True)
    await asyncio.sleep(60)  # "handling": killed before it acks

asyncio.run(main())
"""


async def test_messages_a_killed_worker_was_handling_are_delivered_again_after_the_lease(
    open_channel: OpenChannel, redis_url: str, key_prefix: str
) -> None:
    channel = await open_channel(lease_seconds=1.5)
    await channel.send([message(n) for n in range(3)])
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        channel.name,
        redis_url,
        key_prefix,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), timeout=30)
        assert line.strip() == b"3"
        worker.send_signal(signal.SIGKILL)
        await asyncio.wait_for(worker.wait(), timeout=10)
        killed_at = time.monotonic()

        assert await channel.receive(10, timeout=0.5) == []
        again: list[Delivery] = []
        while len(again) < 3 and time.monotonic() - killed_at < 10:
            again += await channel.receive(10, timeout=1.0)

        assert sorted(number(d) for d in again) == [0, 1, 2]
        assert {d.delivery_count for d in again} == {2}
        assert time.monotonic() - killed_at < 1.5 + 1.5
        await channel.ack(again)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


async def test_a_receiver_whose_waiting_connection_is_killed_still_wakes_for_new_messages(
    private_redis: Server,
) -> None:
    name = f"wake-{uuid.uuid4().hex[:6]}"
    receiver = RedisChannel(name, url=private_redis.url)
    sender = RedisChannel(name, url=private_redis.url)
    admin = Redis.from_url(private_redis.url)
    await receiver.connect(environment())
    await sender.connect(environment())
    try:
        waiting = asyncio.create_task(receiver.receive(1, timeout=4.0))
        await asyncio.sleep(0.3)
        blocked = [c for c in await admin.client_list() if c["cmd"] == "blpop"]
        assert len(blocked) == 1
        assert await admin.client_kill_filter(_id=blocked[0]["id"]) == 1
        await asyncio.sleep(0.3)
        started = time.monotonic()

        await sender.send([message(1)])
        received = await waiting

        assert [number(d) for d in received] == [1]
        assert time.monotonic() - started < 0.5
    finally:
        await receiver.close()
        await sender.close()
        await admin.aclose()


async def test_an_operation_gives_up_with_channel_unavailable_when_the_server_stays_down(
    private_redis: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings.channels.redis import channel as channel_module

    monkeypatch.setattr(channel_module, "_RECONNECT_TIMEOUT", 1.0)
    channel = RedisChannel("orders", url=private_redis.url)
    await channel.connect(environment())
    try:
        private_redis.stop()
        started = time.monotonic()

        with pytest.raises(ChannelUnavailable) as raised:
            await channel.send([message(1)])

        assert 1.0 <= time.monotonic() - started < 5.0
        assert private_redis.url.removesuffix("/0") in str(raised.value)
    finally:
        await channel.close()
