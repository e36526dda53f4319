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
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import _harness as harness
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from tidings._message import Envelope
from tidings.channels.nats import NatsChannel

SEND_BATCH = 256
RECEIVE_BATCH = 100


@contextlib.asynccontextmanager
async def work_queue(url: str, kind: str) -> AsyncIterator[tuple[Client, str]]:
    """A connection and a fresh work-queue stream on file storage, with the durable pull consumer
    "raw" that the raw loops drain; the stream is deleted after."""
    name = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        await js.add_stream(
            name=name, subjects=[name], retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE
        )
        await js.add_consumer(
            name, durable_name="raw", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=-1
        )
        yield client, name
    finally:
        await js.delete_stream(name)
        await client.close()


async def raw_loop(url: str, payloads: list[bytes]) -> harness.Timing:
    async with work_queue(url, "raw") as (client, name):
        js = client.jetstream()
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
        return harness.Timing(sent - started, drained - sent)


async def hand_pipelined_loop(url: str, payloads: list[bytes]) -> harness.Timing:
    async with work_queue(url, "hand") as (client, name):
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
        return harness.Timing(sent - started, drained - sent)


async def channel_loop(url: str, messages: list[Envelope]) -> harness.Timing:
    channel = NatsChannel("bench", url=url, prefix=f"bench{uuid.uuid4().hex[:8]}")
    await channel.connect(harness.channel_environment())
    try:
        return await harness.send_and_drain(
            channel, messages, send_batch=SEND_BATCH, receive_batch=RECEIVE_BATCH
        )
    finally:
        await delete(channel)
        await channel.close()


async def delete(channel: NatsChannel) -> None:
    client = await nats.connect(channel.url)
    try:
        await client.jetstream().delete_stream(channel.stream)
    finally:
        await client.close()


async def app_loop(url: str, messages: list[Envelope]) -> harness.Timing:
    channel = NatsChannel("bench", url=url, prefix=f"bench{uuid.uuid4().hex[:8]}")
    app, handled = harness.counting_app(channel)
    async with app:
        try:
            sent = await harness.send_in_batches(channel, messages, SEND_BATCH)
            started = time.perf_counter()
            await app.run("bench", stop_when_empty=True, concurrency=100, batch_size=RECEIVE_BATCH)
            drained = time.perf_counter()
            assert handled[0] == len(messages), handled[0]
            assert await channel.depth() == 0
        finally:
            await delete(channel)
    return harness.Timing(sent, drained - started)


async def main(count: int, rounds: int, url: str) -> None:
    payloads = harness.order_bodies(count)
    messages = harness.order_envelopes(count, correlated=True)
    results: dict[str, list[harness.Timing]] = {"raw": [], "hand": [], "channel": [], "app": []}
    await channel_loop(url, messages[:2000])  # warm up: code paths hot
    for _ in range(rounds):
        results["raw"].append(await raw_loop(url, payloads))
        results["hand"].append(await hand_pipelined_loop(url, payloads))
        results["channel"].append(await channel_loop(url, messages))
        results["app"].append(await app_loop(url, messages))

    print(
        f"{count:,} messages, median of {rounds} rounds (msgs/s), nats-server {await server_version(url)}\n"
    )
    names = {
        "raw": "raw nats-py JetStream API: publish_async (256 in flight) + fetch(100) + ack()",
        "hand": "raw nats-py hand-pipelined: publish (256 in flight) + no_wait pulls of 100 + +ACK",
        "channel": "NatsChannel: send(256) + receive(100) + ack(batch)",
        "app": "App consumer on NatsChannel (concurrency 100, batch 100)",
    }
    harness.print_send_drain_table(count, results, names, raw_keys=["raw", "hand"])


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
