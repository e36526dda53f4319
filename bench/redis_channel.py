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
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
from redis.asyncio import Redis

from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels.base import ChannelEnvironment
from tidings.channels.redis import RedisChannel

BATCH = 100


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
            },
        )
        for body in bodies(count)
    ]


class Timing:
    def __init__(self, send: float, drain: float) -> None:
        self.send = send
        self.drain = drain

    @property
    def total(self) -> float:
        return self.send + self.drain


async def raw_loop(client: Redis, payloads: list[bytes], *, pipelined: bool) -> Timing:
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
    return Timing(sent - started, drained - sent)


async def channel_loop(url: str, messages: list[Envelope]) -> Timing:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    channel = RedisChannel("bench", url=url, key_prefix=prefix)
    await channel.connect(ChannelEnvironment(app_name="bench", clock=SystemClock()))
    try:
        started = time.perf_counter()
        for first in range(0, len(messages), BATCH):
            await channel.send(messages[first : first + BATCH])
        sent = time.perf_counter()
        handled = 0
        while handled < len(messages):
            deliveries = await channel.receive(BATCH, timeout=1.0)
            for delivery in deliveries:
                handled += len(delivery.envelope.body) > 0  # the trivial handler
            await channel.ack(deliveries)
        drained = time.perf_counter()
        assert await channel.depth() == 0
        await channel.purge()
    finally:
        await channel.close()
    return Timing(sent - started, drained - sent)


async def channel_latency(url: str, rate: float, count: int) -> list[float]:
    """Seconds from `send` to `receive` returning it, one message at a time at `rate` per second."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    producer = RedisChannel("latency", url=url, key_prefix=prefix)
    consumer = RedisChannel("latency", url=url, key_prefix=prefix)
    for channel in (producer, consumer):
        await channel.connect(ChannelEnvironment(app_name="bench", clock=SystemClock()))
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []

    async def consume() -> None:
        while len(latencies) < count:
            deliveries = await consumer.receive(100, timeout=1.0)
            received = time.perf_counter()
            latencies.extend(received - sent_at[d.envelope.body] for d in deliveries)
            await consumer.ack(deliveries)

    try:
        await consumer.receive(1, timeout=0.1)  # subscribed to wake-ups, as a running worker is
        consuming = asyncio.create_task(consume())
        started = time.perf_counter()
        for n, message in enumerate(envelopes(count)):
            await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            sent_at[message.body] = time.perf_counter()
            await producer.send([message])
        await asyncio.wait_for(consuming, timeout=30)
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
        started = time.perf_counter()
        for n, payload in enumerate(bodies(count)):
            await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            sent_at[payload] = time.perf_counter()
            await client.lpush(key, payload)
        await asyncio.wait_for(consuming, timeout=30)
    finally:
        await client.delete(key)
        await consumer.aclose()
        await client.aclose()
    return latencies


def medians(timings: list[Timing]) -> tuple[float, float, float]:
    return (
        statistics.median(t.send for t in timings),
        statistics.median(t.drain for t in timings),
        statistics.median(t.total for t in timings),
    )


def row(name: str, count: int, timings: list[Timing], raw: list[list[Timing]] | None = None) -> str:
    send, drain, total = medians(timings)
    cells = [name, f"{count / send:,.0f}", f"{count / drain:,.0f}", f"{count / total:,.0f}"]
    if raw is None:
        cells += ["", ""]
    else:
        # Against the faster raw loop in each column.
        best_drain = min(medians(r)[1] for r in raw)
        best_total = min(medians(r)[2] for r in raw)
        cells += [f"{best_drain / drain:.0%}", f"{best_total / total:.0%}"]
    return "| " + " | ".join(cells) + " |"


async def main(count: int, rounds: int, url: str) -> None:
    client = Redis.from_url(url)
    payloads = bodies(count)
    messages = envelopes(count)
    results: dict[str, list[Timing]] = {"pipelined": [], "multi": [], "channel": []}
    runs: dict[str, Callable[[], Awaitable[Timing]]] = {
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

    rate, samples = 200.0, 600
    print(f"\nLatency from send to receive at {rate:.0f} msgs/s, {samples} messages (ms)\n")
    print("| loop | p50 | p90 | p99 |")
    print("|---|---:|---:|---:|")
    for name, measure in [
        ("raw redis-py: LPUSH + BRPOP", raw_latency),
        ("RedisChannel: send + waiting receive", channel_latency),
    ]:
        latencies = sorted(await measure(url, rate, samples))
        p50, p90, p99 = (latencies[int(len(latencies) * q)] * 1000 for q in (0.5, 0.9, 0.99))
        print(f"| {name} | {p50:.2f} | {p90:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    options = parser.parse_args()
    asyncio.run(main(options.messages, options.rounds, options.url))
