"""What the per-channel benchmark scripts share: their messages, timed loops and table rows.

The scripts run as files (`.venv/bin/python bench/redis_channel.py`), which puts bench/ first on
sys.path, so they import this module as `_harness`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from tidings import App, asynchronous, event_handler
from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels.base import Channel, ChannelEnvironment

Item = TypeVar("Item")

#: The steady rate and the number of messages of the latency tables.
LATENCY_RATE, LATENCY_SAMPLES = 200.0, 600


@dataclass
class OrderPlaced:
    order_id: str
    total: int


def order_bodies(count: int) -> list[bytes]:
    return [msgspec.json.encode({"order_id": f"o-{n}", "total": n}) for n in range(count)]


def order_envelopes(count: int, *, correlated: bool = False) -> list[Envelope]:
    """OrderPlaced envelopes with the headers an app's publish writes (a correlation id with
    `correlated`, as the Kafka and NATS channels carry one)."""
    now = repr(time.time())
    envelopes = []
    for body in order_bodies(count):
        headers = {
            h.MESSAGE_ID: str(uuid.uuid4()),
            h.ENDPOINT: "handle_order",
            h.MESSAGE_NAME: "OrderPlaced",
            h.CONTENT_TYPE: "application/json",
            h.TIMESTAMP: now,
        }
        if correlated:
            headers[h.CORRELATION_ID] = str(uuid.uuid4())
        envelopes.append(Envelope(body, headers))
    return envelopes


def channel_environment() -> ChannelEnvironment:
    return ChannelEnvironment(app_name="bench", clock=SystemClock())


@dataclass
class Timing:
    send: float
    drain: float
    #: This process's CPU time for the whole loop: what the client side costs, whatever else the
    #: machine is doing (only the SQS script reports it).
    cpu: float = 0.0

    @property
    def total(self) -> float:
        return self.send + self.drain


def medians(timings: list[Timing]) -> tuple[float, float, float]:
    return (
        statistics.median(t.send for t in timings),
        statistics.median(t.drain for t in timings),
        statistics.median(t.total for t in timings),
    )


async def send_in_batches(channel: Channel, messages: list[Envelope], batch: int) -> float:
    """Seconds to send `messages`, `batch` at a time."""
    started = time.perf_counter()
    for first in range(0, len(messages), batch):
        await channel.send(messages[first : first + batch])
    return time.perf_counter() - started


async def send_and_drain(
    channel: Channel, messages: list[Envelope], *, send_batch: int, receive_batch: int
) -> Timing:
    """Sends `messages`, then receives and acks them with a trivial handler until all came back."""
    cpu = time.process_time()
    sent = await send_in_batches(channel, messages, send_batch)
    started = time.perf_counter()
    handled = 0
    while handled < len(messages):
        deliveries = await channel.receive(receive_batch, timeout=1.0)
        for delivery in deliveries:
            handled += len(delivery.envelope.body) > 0  # the trivial handler
        await channel.ack(deliveries)
    drained = time.perf_counter() - started
    timing = Timing(sent, drained, time.process_time() - cpu)
    assert await channel.depth() == 0
    return timing


def counting_app(channel: Channel) -> tuple[App, list[int]]:
    """An app whose handler decodes each OrderPlaced into the dataclass and counts it, as a real
    consumer's handler would; the list holds the count."""
    handled = [0]

    @asynchronous(channel.name)
    @event_handler(endpoint_id="handle_order")
    async def handle_order(event: OrderPlaced) -> None:
        handled[0] += 1

    return App("bench", handlers=[handle_order], channels=[channel]), handled


async def paced(items: Iterable[Item], rate: float) -> AsyncIterator[Item]:
    """The items one at a time, the n-th not before n / rate seconds after the first."""
    started = time.perf_counter()
    for n, item in enumerate(items):
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        yield item


async def receive_latencies(producer: Channel, consumer: Channel, rate: float, count: int) -> list[float]:
    """Seconds from `send` to `receive` returning it, one message at a time at `rate` per second."""
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []

    async def consume() -> None:
        while len(latencies) < count:
            deliveries = await consumer.receive(100, timeout=1.0)
            received = time.perf_counter()
            latencies.extend(received - sent_at[d.envelope.body] for d in deliveries)
            await consumer.ack(deliveries)

    await consumer.receive(1, timeout=0.1)  # subscribed to wake-ups, as a running worker is
    consuming = asyncio.create_task(consume())
    async for message in paced(order_envelopes(count), rate):
        sent_at[message.body] = time.perf_counter()
        await producer.send([message])
    await asyncio.wait_for(consuming, timeout=30)
    return latencies


def table_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def rate_cells(count: int, timings: list[Timing]) -> list[str]:
    """Send, drain and end-to-end rates (messages per second) of the median timings."""
    return [f"{count / seconds:,.0f}" for seconds in medians(timings)]


def against_fastest(timings: list[Timing], raw: list[list[Timing]], columns: Iterable[int]) -> list[str]:
    """The loop's rates over the fastest raw loop's in each of the `medians` columns."""
    ours = medians(timings)
    return [f"{min(medians(loop)[column] for loop in raw) / ours[column]:.0%}" for column in columns]


def print_send_drain_table(
    count: int, results: dict[str, list[Timing]], names: dict[str, str], raw_keys: Iterable[str]
) -> None:
    """Send and drain rates of each loop, and the tidings loops' over the fastest raw loop's."""
    raw_keys = tuple(raw_keys)
    raw_send = min(medians(results[key])[0] for key in raw_keys)
    raw_drain = min(medians(results[key])[1] for key in raw_keys)
    print("| loop | send | drain | send vs raw | drain vs raw |")
    print("|---|---:|---:|---:|---:|")
    for key, name in names.items():
        send, drain, _ = medians(results[key])
        ratios = ["", ""] if key in raw_keys else [f"{raw_send / send:.0%}", f"{raw_drain / drain:.0%}"]
        print(table_row([name, f"{count / send:,.0f}", f"{count / drain:,.0f}", *ratios]))


async def print_latency_table(
    url: str, measures: list[tuple[str, Callable[[str, float, int], Awaitable[list[float]]]]]
) -> None:
    print(f"\nLatency from send to receive at {LATENCY_RATE:.0f} msgs/s, {LATENCY_SAMPLES} messages (ms)\n")
    print("| loop | p50 | p90 | p99 |")
    print("|---|---:|---:|---:|")
    for name, measure in measures:
        latencies = sorted(await measure(url, LATENCY_RATE, LATENCY_SAMPLES))
        p50, p90, p99 = (latencies[int(len(latencies) * q)] * 1000 for q in (0.5, 0.9, 0.99))
        print(f"| {name} | {p50:.2f} | {p90:.2f} | {p99:.2f} |")
