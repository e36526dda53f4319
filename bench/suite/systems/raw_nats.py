"""The raw nats-py JetStream loop: the limit on NATS.

A file-storage work-queue stream and a durable pull consumer (explicit acks) per run. Producer:
`js.publish` (awaiting the stream's ack), 100 in flight. Worker (`python -m
bench.suite.systems.raw_nats`), one process: `fetch(100)`, handle each message, `msg.ack()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import nats
from bench.suite import config, probe
from bench.suite.common import body, decode_job, enqueue_in_flight, pace_async, python_module
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

BATCH = 100
SETTINGS = (
    "1 process; durable pull consumer, `fetch(100)` + `msg.ack()` each; file storage; 100 publishes in flight"
)


def worker_command() -> list[str]:
    return python_module(__name__)


async def _connect() -> tuple[NATS, JetStreamContext]:
    client = await nats.connect(config.NATS_URL)
    js = client.jetstream()
    name = config.queue_name()
    await js.add_stream(
        name=name, subjects=[name], retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE
    )
    await js.add_consumer(name, durable_name="raw", ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=-1)
    return client, js


async def enqueue(count: int) -> float:
    client, js = await _connect()
    name = config.queue_name()
    try:
        return await enqueue_in_flight(count, lambda n: js.publish(name, body(n)))
    finally:
        await client.close()


async def pace(count: int, rate: float) -> None:
    client, js = await _connect()
    name = config.queue_name()
    try:
        await pace_async(count, rate, lambda n, sent: js.publish(name, body(n, sent)))
    finally:
        await client.close()


async def cleanup() -> None:
    client = await nats.connect(config.NATS_URL)
    with contextlib.suppress(NotFoundError):
        await client.jetstream().delete_stream(config.queue_name())
    await client.close()


async def _work() -> None:
    client, js = await _connect()
    subscription = await js.pull_subscribe_bind("raw", stream=config.queue_name())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            messages = await subscription.fetch(BATCH, timeout=1.0)
        except TimeoutError:
            continue
        for message in messages:
            probe.handled(decode_job(message.data).sent)  # the trivial handler
            await message.ack()
    await client.close()


if __name__ == "__main__":
    asyncio.run(_work())
