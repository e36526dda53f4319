"""tidings: an App with one asynchronous command handler, run by `tidings run` as its users run it.

Producer: `await app.commands.send(Job(...))`, 100 sends in flight. Worker: `tidings run
bench.suite.systems.tidings_app:app <channel>` with its defaults (one process, `--concurrency 10`,
`--batch-size 100`); deduplication on (the default: in memory, or in the app's database on PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from bench.suite import config, probe
from bench.suite.common import enqueue_in_flight, executable, pace_async

from tidings import App, Channel, asynchronous, command_handler

CONCURRENCY = 10
_SQL_URL = f"postgresql+asyncpg://{config.POSTGRES_SERVER}/{config.POSTGRES_DATABASE}"
_CHANNEL_NOTES = {
    "rabbitmq": "RabbitMQChannel (durable queue, persistent messages, publisher confirms, prefetch 500)",
    "redis": "RedisChannel (lists with leases by Lua scripts)",
    "postgres": "SqlChannel (asynchronous commit for claims and acks, the default); "
    "dedup records in the app's database (the default)",
    "nats": "NatsChannel (file-storage work-queue stream, batched confirmed acks)",
    "kafka": "KafkaChannel (4 partitions, acks=all, commits after handling)",
    "sqs": "SqsChannel (standard queue, batches of 10, long polling)",
}


@dataclass
class Job:
    n: int
    sent: float


async def handle(job: Job) -> None:
    probe.handled(job.sent)  # the trivial handler


def _deduplicate() -> bool:
    return os.environ.get("BENCH_DEDUPLICATE", "1") == "1"


def settings() -> str:
    channel = _CHANNEL_NOTES[config.broker()]
    if not _deduplicate():
        channel = channel.split(";")[0] + "; `App(deduplicate=False)`: no dedup records"
    defaults = f"1 process, `--concurrency {CONCURRENCY}` and `--batch-size 100` (defaults)"
    return f"{defaults}; {channel}; 100 sends in flight"


def _channel() -> tuple[Channel, str | None]:
    name, broker = config.queue_name(), config.broker()
    if broker == "rabbitmq":
        from tidings.channels.rabbitmq import RabbitMQChannel

        return RabbitMQChannel(name, url=config.RABBITMQ_URL), None
    if broker == "redis":
        from tidings.channels.redis import RedisChannel

        return RedisChannel(name, url=config.REDIS_URL, key_prefix=name), None
    if broker == "postgres":
        from tidings.channels.sql import SqlChannel

        return SqlChannel(name), _SQL_URL
    if broker == "nats":
        from tidings.channels.nats import NatsChannel

        return NatsChannel(name, url=config.NATS_URL, prefix=name), None
    if broker == "kafka":
        from tidings.channels.kafka import KafkaChannel

        return KafkaChannel(name, bootstrap_servers=config.KAFKA_SERVERS), None
    if broker == "sqs":
        from tidings.channels.sqs import SqsChannel

        credentials = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        return SqsChannel(name, endpoint_url=config.SQS_URL, **credentials), None
    raise ValueError(f"no tidings channel for {broker}")


def app() -> App:
    """The app `tidings run` loads (a function returning it is accepted there)."""
    channel, database = _channel()
    handler = asynchronous(channel.name)(command_handler(handle))
    return App("bench", handlers=[handler], channels=[channel], database=database, deduplicate=_deduplicate())


def worker_command() -> list[str]:
    return [
        executable("tidings"),
        "--log-level",
        "WARNING",
        "run",
        f"{__name__}:app",
        config.queue_name(),
        "--concurrency",
        str(CONCURRENCY),
    ]


async def _schema() -> None:
    if config.broker() == "postgres":
        from tidings.sql import Database

        database = Database(_SQL_URL)
        await database.create_schema()
        await database.close()


async def enqueue(count: int) -> float:
    await _schema()
    async with app() as running:
        send = running.commands.send
        return await enqueue_in_flight(count, lambda n: send(Job(n, 0.0)))


async def pace(count: int, rate: float) -> None:
    async with app() as running:
        send = running.commands.send
        await pace_async(count, rate, lambda n, sent: send(Job(n, sent)))


async def cleanup() -> None:
    built = app()
    async with built:
        channel = built.channel(config.queue_name())
        await channel.purge()
        if config.broker() == "rabbitmq":
            await channel.delete()  # type: ignore[attr-defined]
    if config.broker() == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(config.REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{config.queue_name()}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    if config.broker() == "kafka":
        from bench.suite.systems.raw_kafka import delete_topics_of_run

        await delete_topics_of_run()
    if config.broker() == "sqs":
        from bench.suite.systems.raw_sqs import cleanup as delete_queue

        await delete_queue()
    if config.broker() == "nats":
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(config.NATS_URL)
        with contextlib.suppress(NotFoundError):
            await client.jetstream().delete_stream(f"{config.queue_name()}-{config.queue_name()}")
        await client.close()
