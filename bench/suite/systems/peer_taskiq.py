"""Taskiq on RabbitMQ (taskiq-aio-pika) or Redis (taskiq-redis streams), run with `taskiq worker`.

- RabbitMQ: a durable *classic* queue (taskiq-aio-pika declares quorum queues by default; classic is
  what every other system here uses), its own exchange per run, persistent messages, publisher confirms
  (aio-pika's default), qos 10 (the default).
- Redis: `RedisStreamBroker`, a stream with a consumer group, acked after the task ran.

Worker: its defaults, 2 processes, up to 100 tasks at once each, acks when the (ignored) result is
saved, i.e. after the task ran; `--log-level WARNING`. Producer: `await job.kiq(...)`, 100 in flight.
"""

from __future__ import annotations

from typing import Any

from bench.suite import config, probe
from bench.suite.common import enqueue_in_flight, executable, pace_async

_QUEUE = config.queue_name()
_ON_RABBITMQ = config.broker() == "rabbitmq"

if _ON_RABBITMQ:
    from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

    broker: Any = AioPikaBroker(
        config.RABBITMQ_URL,
        exchange=Exchange(name=_QUEUE),
        task_queues=[Queue(name=_QUEUE, type=QueueType.CLASSIC)],
        dead_letter_queue=Queue(name=f"{_QUEUE}.dead_letter", type=QueueType.CLASSIC),
    )
else:
    from taskiq_redis import RedisStreamBroker

    broker = RedisStreamBroker(config.REDIS_URL, queue_name=_QUEUE, consumer_group_name="bench")


@broker.task(task_name="job")
async def job(n: int, sent: float) -> None:
    probe.handled(sent)  # the trivial handler


def settings() -> str:
    where = (
        "classic durable queue (default: quorum), qos 10 (default), publisher confirms (default)"
        if _ON_RABBITMQ
        else "`RedisStreamBroker` (stream + consumer group, acks)"
    )
    return (
        "2 processes \u00d7 up to 100 async tasks (defaults); ack after the task; "
        f"{where}; 100 `kiq()` in flight"
    )


def worker_command() -> list[str]:
    return [executable("taskiq"), "worker", f"{__name__}:broker", "--log-level", "WARNING"]


async def enqueue(count: int) -> float:
    await broker.startup()
    try:
        return await enqueue_in_flight(count, lambda n: job.kiq(n, 0.0))
    finally:
        await broker.shutdown()


async def pace(count: int, rate: float) -> None:
    await broker.startup()
    try:
        await pace_async(count, rate, lambda n, sent: job.kiq(n, sent))
    finally:
        await broker.shutdown()


async def cleanup() -> None:
    if _ON_RABBITMQ:
        import aio_pika

        connection = await aio_pika.connect(config.RABBITMQ_URL)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(_QUEUE)
            await channel.queue_delete(f"{_QUEUE}.dead_letter")
            await channel.exchange_delete(_QUEUE)
        return
    from redis.asyncio import Redis

    client = Redis.from_url(config.REDIS_URL)
    await client.delete(_QUEUE, f"autoclaim:bench:{_QUEUE}")
    await client.aclose()
