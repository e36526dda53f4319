"""RedisChannel against the raw redis-py loop it stands on, measured in the same run.

    .venv/bin/python bench/redis_channel.py [--messages 20000] [--rounds 3] [--url redis://...]

Each round sends N small messages in batches of 100 and drains them 100 at a time, with a trivial
handler, first with raw redis-py, then with RedisChannel (send batches of 100, receive(100) + ack).
The raw loops:

- *pipelined LPUSH*: each batch is one pipeline of 100 LPUSH commands; drained with `LPOP key 100`.
- *multi-value LPUSH*: each batch is one `LPUSH key v1 .. v100`; drained with `LPOP key 100`.

The table shows medians over the rounds; the ratios are the channel's drain and end-to-end rates
over the faster raw loop's in each column. A second table shows the latency from send to receive at a
steady 200 messages per second, with a receiver waiting (woken by the channel's publication).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import _harness as harness
from redis.asyncio import Redis

from tidings._message import Envelope
from tidings.channels.redis import RedisChannel

BATCH = 100


async def raw_loop(client: Redis, payloads: list[bytes], *, pipelined: bool) -> harness.Timing:
    key = f"bench-raw-{uuid.uuid4().hex}"
    started = time.perf_counter()
    for first in range(0, len(payloads), BATCH):
        batch = payloads[first : first + BATCH]
        if pipelined:
            pipe = client.pipeline(transaction=False)
            for payload in batch:
                pipe.lpush(key, payload)
            await pipe.execute()
        else:
            await client.lpush(key, *batch)
    sent = time.perf_counter()
    handled = 0
    while handled < len(payloads):
        popped: list[bytes] | None = await client.lpop(key, BATCH)  # type: ignore[assignment]
        if popped:
            for payload in popped:
                handled += len(payload) > 0  # the trivial handler
    drained = time.perf_counter()
    await client.delete(key)
    return harness.Timing(sent - started, drained - sent)


async def channel_loop(url: str, messages: list[Envelope]) -> harness.Timing:
    channel = RedisChannel("bench", url=url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    await channel.connect(harness.channel_environment())
    try:
        timing = await harness.send_and_drain(channel, messages, send_batch=BATCH, receive_batch=BATCH)
        await channel.purge()
    finally:
        await channel.close()
    return timing


async def channel_latency(url: str, rate: float, count: int) -> list[float]:
    """Seconds from `send` to `receive` returning it, one message at a time at `rate` per second."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    producer = RedisChannel("latency", url=url, key_prefix=prefix)
    consumer = RedisChannel("latency", url=url, key_prefix=prefix)
    for channel in (producer, consumer):
        await channel.connect(harness.channel_environment())
    try:
        latencies = await harness.receive_latencies(producer, consumer, rate, count)
        await producer.purge()
    finally:
        await producer.close()
        await consumer.close()
    return latencies


async def raw_latency(url: str, rate: float, count: int) -> list[float]:
    """The same with raw redis-py: LPUSH, and a BRPOP waiting on another connection."""
    key = f"bench-raw-{uuid.uuid4().hex}"
    client, consumer = Redis.from_url(url), Redis.from_url(url)
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []

    async def consume() -> None:
        while len(latencies) < count:
            popped: tuple[bytes, bytes] | None = await consumer.brpop([key], timeout=1)  # type: ignore[assignment]
            if popped:
                latencies.append(time.perf_counter() - sent_at[popped[1]])

    try:
        consuming = asyncio.create_task(consume())
        async for payload in harness.paced(harness.order_bodies(count), rate):
            sent_at[payload] = time.perf_counter()
            await client.lpush(key, payload)
        await asyncio.wait_for(consuming, timeout=30)
    finally:
        await client.delete(key)
        await consumer.aclose()
        await client.aclose()
    return latencies


def row(
    name: str, count: int, timings: list[harness.Timing], raw: list[list[harness.Timing]] | None = None
) -> str:
    ratios = ["", ""] if raw is None else harness.against_fastest(timings, raw, columns=(1, 2))
    return harness.table_row([name, *harness.rate_cells(count, timings), *ratios])


async def main(count: int, rounds: int, url: str) -> None:
    client = Redis.from_url(url)
    payloads = harness.order_bodies(count)
    messages = harness.order_envelopes(count)
    results: dict[str, list[harness.Timing]] = {"pipelined": [], "multi": [], "channel": []}
    runs: dict[str, Callable[[], Awaitable[harness.Timing]]] = {
        "pipelined": lambda: raw_loop(client, payloads, pipelined=True),
        "multi": lambda: raw_loop(client, payloads, pipelined=False),
        "channel": lambda: channel_loop(url, messages),
    }
    try:
        await channel_loop(url, messages[:2000])  # warm up: scripts loaded, code paths hot
        for _ in range(rounds):
            for name, run in runs.items():
                results[name].append(await run())
    finally:
        await client.aclose()

    print(f"{count:,} messages, batches of {BATCH}, median of {rounds} rounds (msgs/s)\n")
    print("| loop | send | drain | end to end | drain vs raw | end to end vs raw |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("raw redis-py: pipelined LPUSH + LPOP 100", count, results["pipelined"], None))
    print(row("raw redis-py: multi-value LPUSH + LPOP 100", count, results["multi"], None))
    raw = [results["pipelined"], results["multi"]]
    print(row("RedisChannel: send + receive(100) + ack", count, results["channel"], raw))

    await harness.print_latency_table(
        url,
        [
            ("raw redis-py: LPUSH + BRPOP", raw_latency),
            ("RedisChannel: send + waiting receive", channel_latency),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    options = parser.parse_args()
    asyncio.run(main(options.messages, options.rounds, options.url))
