"""NatsChannel against the raw nats-py JetStream loop it stands on, measured in the same run.

    .venv/bin/python bench/nats_channel.py [--messages 20000] [--rounds 3] [--url nats://...]

Each round stores N small messages in a fresh work-queue stream (file storage) and drains them with
a trivial handler, three ways:

- *raw nats-py JetStream API*: `js.publish_async` with 256 publishes in flight, then `fetch(100)` on
  a durable pull consumer and `msg.ack()` on each message (fire-and-forget, one flush at the end).
- *raw nats-py, hand-pipelined*: the same on the core client, without the JetStream helpers: 256
  `publish(reply=...)` at a time with the JetStream acks counted on one wildcard subscription, and
  `no_wait` pull requests of 100 answered on another, plain `+ACK` publishes and one final flush.
  This is the fastest loop I could write on nats-py; the channel is built the same way.
- *NatsChannel*: `send` in batches of 256, then `receive(100)` + `ack(batch)` (acks confirmed).
- *App consumer*: the same sends, drained by `app.run(stop_when_empty=True, concurrency=100,
  batch_size=100)` with an `@event_handler` that decodes each message into a dataclass: receive,
  decode, deduplication check, handler, batched acks.

The table shows medians over the rounds (messages per second); the ratios are each tidings loop's
send and drain rates over the faster raw loop's in each column.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass

import msgspec
import nats
from nats.aio.msg import Msg
from nats.js import api

from tidings import App, asynchronous, event_handler
from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels.base import ChannelEnvironment
from tidings.channels.nats import NatsChannel

SEND_BATCH = 256
RECEIVE_BATCH = 100


@dataclass
class OrderPlaced:
    order_id: str
    total: int


def bodies(count: int) -> list[bytes]:
    return [msgspec.json.encode({"order_id": f"o-{n}", "total": n}) for n in range(count)]


def envelopes(count: int) -> list[Envelope]:
    now = repr(time.time())
    return [
        Envelope(
            body,
            {
                h.MESSAGE_ID: str(uuid.uuid4()),
                h.ENDPOINT: "handle_order",
                h.MESSAGE_NAME: "OrderPlaced",
                h.CONTENT_TYPE: "application/json",
                h.TIMESTAMP: now,
                h.CORRELATION_ID: str(uuid.uuid4()),
            },
        )
        for body in bodies(count)
    ]


@dataclass
class Timing:
    send: float
    drain: float


async def raw_loop(url: str, payloads: list[bytes]) -> Timing:
    name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        await js.add_stream(
            name=name, subjects=[name], retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE
        )
        await js.add_consumer(
            name, durable_name="raw", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=-1
        )
        subscription = await js.pull_subscribe_bind("raw", stream=name)
        started = time.perf_counter()
        for first in range(0, len(payloads), SEND_BATCH):
            futures = [await js.publish_async(name, p) for p in payloads[first : first + SEND_BATCH]]
            await asyncio.gather(*futures)
        sent = time.perf_counter()
        handled = 0
        while handled < len(payloads):
            try:
                messages = await subscription.fetch(RECEIVE_BATCH, timeout=1.0)
            except TimeoutError:
                continue
            for message in messages:
                handled += len(message.data) > 0  # the trivial handler
                await message.ack()
        await client.flush()
        drained = time.perf_counter()
        return Timing(sent - started, drained - sent)
    finally:
        await js.delete_stream(name)
        await client.close()


async def hand_pipelined_loop(url: str, payloads: list[bytes]) -> Timing:
    name = f"bench-hand-{uuid.uuid4().hex[:8]}"
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        await js.add_stream(
            name=name, subjects=[name], retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE
        )
        await js.add_consumer(
            name, durable_name="raw", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=-1
        )
        loop = asyncio.get_running_loop()
        acked = [0]
        enough: list[asyncio.Future[None]] = [loop.create_future()]
        target = [0]

        async def on_ack(message: Msg) -> None:
            acked[0] += 1
            if acked[0] >= target[0] and not enough[0].done():
                enough[0].set_result(None)

        ack_inbox = client.new_inbox()
        await client.subscribe(ack_inbox + ".*", cb=on_ack)
        started = time.perf_counter()
        for first in range(0, len(payloads), SEND_BATCH):
            batch = payloads[first : first + SEND_BATCH]
            target[0] += len(batch)
            enough[0] = loop.create_future()
            for n, payload in enumerate(batch, first):
                await client.publish(name, payload, reply=f"{ack_inbox}.{n}")
            await enough[0]
        sent = time.perf_counter()

        arrived: list[Msg] = []
        pull_done: list[asyncio.Future[None]] = [loop.create_future()]

        async def on_delivery(message: Msg) -> None:
            if message.headers and "Status" in message.headers:
                if not pull_done[0].done():
                    pull_done[0].set_result(None)
                return
            arrived.append(message)
            if len(arrived) >= RECEIVE_BATCH and not pull_done[0].done():
                pull_done[0].set_result(None)

        pull_inbox = client.new_inbox()
        await client.subscribe(pull_inbox, cb=on_delivery)
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{name}.raw"
        request = b'{"batch":%d,"no_wait":true}' % RECEIVE_BATCH
        handled = 0
        while handled < len(payloads):
            pull_done[0] = loop.create_future()
            await client.publish(next_subject, request, reply=pull_inbox)
            await pull_done[0]
            batch_of, arrived[:] = list(arrived), []
            for message in batch_of:
                handled += len(message.data) > 0  # the trivial handler
                await client.publish(message.reply, b"+ACK")
        await client.flush()
        drained = time.perf_counter()
        return Timing(sent - started, drained - sent)
    finally:
        await js.delete_stream(name)
        await client.close()


async def channel_loop(url: str, messages: list[Envelope]) -> Timing:
    channel = NatsChannel("bench", url=url, prefix=f"bench{uuid.uuid4().hex[:8]}")
    await channel.connect(ChannelEnvironment(app_name="bench", clock=SystemClock()))
    try:
        sent = await send_all(channel, messages)
        started = time.perf_counter()
        handled = 0
        while handled < len(messages):
            deliveries = await channel.receive(RECEIVE_BATCH, timeout=1.0)
            for delivery in deliveries:
                handled += len(delivery.envelope.body) > 0  # the trivial handler
            await channel.ack(deliveries)
        drained = time.perf_counter()
        assert await channel.depth() == 0
        return Timing(sent, drained - started)
    finally:
        await delete(channel)
        await channel.close()


async def send_all(channel: NatsChannel, messages: list[Envelope]) -> float:
    started = time.perf_counter()
    for first in range(0, len(messages), SEND_BATCH):
        await channel.send(messages[first : first + SEND_BATCH])
    return time.perf_counter() - started


async def delete(channel: NatsChannel) -> None:
    client = await nats.connect(channel.url)
    try:
        await client.jetstream().delete_stream(channel.stream)
    finally:
        await client.close()


async def app_loop(url: str, messages: list[Envelope]) -> Timing:
    handled = [0]

    @asynchronous("bench")
    @event_handler(endpoint_id="handle_order")
    async def handle_order(event: OrderPlaced) -> None:
        handled[0] += 1

    channel = NatsChannel("bench", url=url, prefix=f"bench{uuid.uuid4().hex[:8]}")
    app = App("bench", handlers=[handle_order], channels=[channel])
    async with app:
        try:
            sent = await send_all(channel, messages)
            started = time.perf_counter()
            await app.run("bench", stop_when_empty=True, concurrency=100, batch_size=RECEIVE_BATCH)
            drained = time.perf_counter()
            assert handled[0] == len(messages), handled[0]
            assert await channel.depth() == 0
        finally:
            await delete(channel)
    return Timing(sent, drained - started)


def rate(count: int, seconds: list[float]) -> float:
    return count / statistics.median(seconds)


async def main(count: int, rounds: int, url: str) -> None:
    payloads = bodies(count)
    messages = envelopes(count)
    results: dict[str, list[Timing]] = {"raw": [], "hand": [], "channel": [], "app": []}
    await channel_loop(url, messages[:2000])  # warm up: code paths hot
    for _ in range(rounds):
        results["raw"].append(await raw_loop(url, payloads))
        results["hand"].append(await hand_pipelined_loop(url, payloads))
        results["channel"].append(await channel_loop(url, messages))
        results["app"].append(await app_loop(url, messages))

    raw_send = max(rate(count, [t.send for t in results[key]]) for key in ("raw", "hand"))
    raw_drain = max(rate(count, [t.drain for t in results[key]]) for key in ("raw", "hand"))
    print(
        f"{count:,} messages, median of {rounds} rounds (msgs/s), nats-server {await server_version(url)}\n"
    )
    print("| loop | send | drain | send vs raw | drain vs raw |")
    print("|---|---:|---:|---:|---:|")
    names = {
        "raw": "raw nats-py JetStream API: publish_async (256 in flight) + fetch(100) + ack()",
        "hand": "raw nats-py hand-pipelined: publish (256 in flight) + no_wait pulls of 100 + +ACK",
        "channel": "NatsChannel: send(256) + receive(100) + ack(batch)",
        "app": "App consumer on NatsChannel (concurrency 100, batch 100)",
    }
    for key, name in names.items():
        send = rate(count, [t.send for t in results[key]])
        drain = rate(count, [t.drain for t in results[key]])
        ratios = (
            ["", ""] if key in ("raw", "hand") else [f"{send / raw_send:.0%}", f"{drain / raw_drain:.0%}"]
        )
        print(f"| {name} | {send:,.0f} | {drain:,.0f} | {ratios[0]} | {ratios[1]} |")


async def server_version(url: str) -> str:
    client = await nats.connect(url)
    try:
        version = client.connected_server_version
        return f"{version.major}.{version.minor}.{version.patch}"
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    options = parser.parse_args()
    asyncio.run(main(options.messages, options.rounds, options.url))
