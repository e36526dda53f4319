"""The raw aio-pika loop: the limit on RabbitMQ for a Python consumer that acks each message.

Producer: persistent messages to a durable queue through the default exchange, publisher confirms,
100 publishes in flight. Worker (`python -m bench.suite.systems.raw_rabbitmq`): one process, prefetch
500, a consumer callback that handles the message and then calls `message.ack()`.
"""

from __future__ import annotations

import asyncio
import signal

import aio_pika
from bench.suite import config, probe
from bench.suite.common import body, decode_job, enqueue_in_flight, pace_async, python_module

PREFETCH = 500
SETTINGS = "1 process; prefetch 500; `message.ack()` after each handler; publisher confirms, 100 in flight"


def worker_command() -> list[str]:
    return python_module(__name__)


async def _declare(channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(config.queue_name(), durable=True)


async def _publisher() -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractExchange]:
    connection = await aio_pika.connect(config.RABBITMQ_URL)
    channel = await connection.channel(publisher_confirms=True)
    await _declare(channel)
    return connection, channel.default_exchange


def _message(n: int, sent: float) -> aio_pika.Message:
    return aio_pika.Message(body(n, sent), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def enqueue(count: int) -> float:
    connection, exchange = await _publisher()
    queue = config.queue_name()
    async with connection:
        return await enqueue_in_flight(count, lambda n: exchange.publish(_message(n, 0.0), routing_key=queue))


async def pace(count: int, rate: float) -> None:
    connection, exchange = await _publisher()
    queue = config.queue_name()
    async with connection:
        await pace_async(count, rate, lambda n, sent: exchange.publish(_message(n, sent), routing_key=queue))


async def cleanup() -> None:
    connection = await aio_pika.connect(config.RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(config.queue_name())


async def _work() -> None:
    connection = await aio_pika.connect(config.RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await _declare(channel)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            probe.handled(decode_job(message.body).sent)  # the trivial handler
            await message.ack()

        await queue.consume(on_message)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_work())
