"""RabbitMQChannel against the raw aio-pika loops a user would write, measured in the same run.

    .venv/bin/python bench/rabbitmq_channel.py [--messages 20000] [--rounds 3] [--url amqp://...]

Every loop sends N small persistent messages (the same body and five tidings headers each) to a
durable queue with `x-max-priority` 10, with publisher confirms, then drains them with a trivial
handler, prefetch 500:

- *raw aio-pika, awaiting each confirm*: `await exchange.publish(...)` one message at a time; consumed
  with a callback that calls `message.ack()` for each message.
- *raw aio-pika, pipelined confirms*: each batch of 100 published with `asyncio.gather`; consumed the
  same way.
- *raw aiormq, pipelined confirms*: the driver RabbitMQChannel stands on, for reference: each batch
  of 100 `basic_publish` calls (without waiting for the socket) gathered; consumed with one
  `basic_ack` per message.
- *RabbitMQChannel*: `send` in batches of 100; drained with `receive(100)` + `ack(batch)`.

The table shows medians over the rounds; the ratios compare the channel with the raw aio-pika loop
with per-message acks (the drain) and with the pipelined raw aio-pika loop (end to end). A second table
shows the latency from send to receive at a steady 200 messages per second.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import _harness as harness
import aio_pika
import aiormq
from pamqp.commands import Basic

from tidings._message import Envelope
from tidings.channels.rabbitmq import RabbitMQChannel

BATCH = 100
PREFETCH = 500
QUEUE_ARGUMENTS = {"x-max-priority": 10}


async def pika_loop(url: str, messages: list[Envelope], *, pipelined: bool) -> harness.Timing:
    queue_name = f"bench-raw-{uuid.uuid4().hex[:12]}"
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(queue_name, durable=True, arguments=QUEUE_ARGUMENTS)
        exchange = channel.default_exchange
        outgoing = [
            aio_pika.Message(m.body, headers=dict(m.headers), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            for m in messages
        ]
        started = time.perf_counter()
        if pipelined:
            for first in range(0, len(outgoing), BATCH):
                await asyncio.gather(
                    *[
                        exchange.publish(message, routing_key=queue_name)
                        for message in outgoing[first : first + BATCH]
                    ]
                )
        else:
            for message in outgoing:
                await exchange.publish(message, routing_key=queue_name)
        sent = time.perf_counter()

        handled = 0
        finished = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal handled
            handled += len(message.body) > 0  # the trivial handler
            await message.ack()
            if handled == len(outgoing):
                finished.set()

        tag = await queue.consume(on_message)
        await finished.wait()
        drained = time.perf_counter()
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    return harness.Timing(sent - started, drained - sent)


async def aiormq_loop(url: str, messages: list[Envelope]) -> harness.Timing:
    queue_name = f"bench-raw-{uuid.uuid4().hex[:12]}"
    async with aiormq.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.basic_qos(prefetch_count=PREFETCH)
        await channel.queue_declare(queue_name, durable=True, arguments=QUEUE_ARGUMENTS)
        outgoing = [(m.body, Basic.Properties(delivery_mode=2, headers=dict(m.headers))) for m in messages]
        started = time.perf_counter()
        for first in range(0, len(outgoing), BATCH):
            await asyncio.gather(
                *[
                    channel.basic_publish(body, routing_key=queue_name, properties=properties, wait=False)
                    for body, properties in outgoing[first : first + BATCH]
                ]
            )
        sent = time.perf_counter()

        handled = 0
        finished = asyncio.Event()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal handled
            handled += len(message.body) > 0  # the trivial handler
            await channel.basic_ack(message.delivery_tag)  # type: ignore[arg-type]
            if handled == len(outgoing):
                finished.set()

        consumed = await channel.basic_consume(queue_name, on_message)
        await finished.wait()
        drained = time.perf_counter()
        await channel.basic_cancel(consumed.consumer_tag)  # type: ignore[arg-type]
        await channel.queue_delete(queue_name)
    return harness.Timing(sent - started, drained - sent)


async def channel_loop(url: str, messages: list[Envelope]) -> harness.Timing:
    channel = RabbitMQChannel(f"bench-{uuid.uuid4().hex[:12]}", url=url, prefetch=PREFETCH)
    await channel.connect(harness.channel_environment())
    try:
        return await harness.send_and_drain(channel, messages, send_batch=BATCH, receive_batch=BATCH)
    finally:
        await channel.delete()


async def channel_latency(url: str, rate: float, count: int) -> list[float]:
    """Seconds from `send` to `receive` returning it, one message at a time at `rate` per second."""
    name = f"bench-latency-{uuid.uuid4().hex[:12]}"
    producer = RabbitMQChannel(name, url=url)
    consumer = RabbitMQChannel(name, url=url)
    for channel in (producer, consumer):
        await channel.connect(harness.channel_environment())
    try:
        return await harness.receive_latencies(producer, consumer, rate, count)
    finally:
        await consumer.close()
        await producer.delete()


async def pika_latency(url: str, rate: float, count: int) -> list[float]:
    """The same with raw aio-pika: publish awaiting its confirm, a consumer acking each message."""
    connection = await aio_pika.connect(url)
    latencies: list[float] = []
    sent_at: dict[bytes, float] = {}
    done = asyncio.Event()
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(
            f"bench-latency-{uuid.uuid4().hex[:12]}", durable=True, arguments=QUEUE_ARGUMENTS
        )

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            latencies.append(time.perf_counter() - sent_at[message.body])
            await message.ack()
            if len(latencies) == count:
                done.set()

        tag = await queue.consume(on_message)
        async for message in harness.paced(harness.order_envelopes(count), rate):
            sent_at[message.body] = time.perf_counter()
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, headers=dict(message.headers), delivery_mode=2),
                routing_key=queue.name,
            )
        await asyncio.wait_for(done.wait(), timeout=30)
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    return latencies


def row(name: str, count: int, timings: list[harness.Timing], ratios: tuple[str, str] = ("", "")) -> str:
    return harness.table_row([name, *harness.rate_cells(count, timings), *ratios])


async def main(count: int, rounds: int, url: str) -> None:
    messages = harness.order_envelopes(count)
    loops: dict[str, Callable[[], Awaitable[harness.Timing]]] = {
        "pika-each": lambda: pika_loop(url, messages, pipelined=False),
        "pika-pipelined": lambda: pika_loop(url, messages, pipelined=True),
        "aiormq": lambda: aiormq_loop(url, messages),
        "channel": lambda: channel_loop(url, messages),
    }
    results: dict[str, list[harness.Timing]] = {name: [] for name in loops}
    await channel_loop(url, messages[:2000])  # warm up
    await pika_loop(url, messages[:2000], pipelined=True)
    for _ in range(rounds):
        for name, run in loops.items():
            results[name].append(await run())

    per_message_ack_drain = statistics.median(
        t.drain for t in results["pika-each"] + results["pika-pipelined"]
    )
    pipelined_total = harness.medians(results["pika-pipelined"])[2]
    _, channel_drain, channel_total = harness.medians(results["channel"])
    print(f"{count:,} persistent messages, batches of {BATCH}, prefetch {PREFETCH}, ")
    print(f"median of {rounds} rounds (msgs/s)\n")
    print("| loop | send | drain | end to end | drain vs raw per-message ack | end to end vs raw pipelined |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("raw aio-pika: publish awaiting each confirm + ack() each", count, results["pika-each"]))
    print(row("raw aio-pika: pipelined confirms + ack() each", count, results["pika-pipelined"]))
    print(row("raw aiormq: pipelined confirms + basic_ack each", count, results["aiormq"]))
    ratios = (f"{per_message_ack_drain / channel_drain:.2f}x", f"{pipelined_total / channel_total:.2f}x")
    print(row("RabbitMQChannel: send(100) + receive(100) + ack(batch)", count, results["channel"], ratios))

    await harness.print_latency_table(
        url,
        [
            ("raw aio-pika: publish (confirmed) + consumer callback", pika_latency),
            ("RabbitMQChannel: send + waiting receive", channel_latency),
        ],
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nPeak RSS of this process (all loops): {peak:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    options = parser.parse_args()
    asyncio.run(main(options.messages, options.rounds, options.url))
