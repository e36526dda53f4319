"""FastStream on RabbitMQ, Redis, NATS JetStream or Kafka, run with `faststream run`.

- RabbitMQ: a durable queue, messages published with `persist=True` (publisher confirms are on by
  default); the subscriber acks after the handler (the default); prefetch unlimited (the default).
- Redis: a stream with a consumer group (`StreamSub(group=..., consumer=...)`), acked after the
  handler; the group is created at id 0 before the first message, as when consumers were deployed
  first; `max_workers=10`.
- NATS: a JetStream stream (file storage), a durable pull subscriber (`PullSub(batch_size=100)`),
  acked after the handler; `max_workers=10`.
- Kafka: a 4-partition topic, a group subscriber from the earliest offset with `AckPolicy.ACK` (the
  offset committed after the handler; FastStream's default commits first); `max_workers=10`.

One process (`faststream run` default), `--log-level warning` (the default INFO logs every message).
The handler takes `n: int, sent: float` from a JSON object, as FastStream users write it. Producer:
`await broker.publish(...)`, 100 in flight.
"""

from __future__ import annotations

import contextlib
from typing import Any

from bench.suite import config, probe
from bench.suite.common import enqueue_in_flight, executable, pace_async
from faststream import FastStream

_QUEUE = config.queue_name()
_BROKER = config.broker()
_GROUP = "bench"
CONCURRENCY = 10


async def job(n: int, sent: float) -> None:
    probe.handled(sent)  # the trivial handler


if _BROKER == "rabbitmq":
    from faststream.rabbit import RabbitBroker, RabbitQueue

    broker: Any = RabbitBroker(config.RABBITMQ_URL)
    _queue = RabbitQueue(_QUEUE, durable=True)
    broker.subscriber(_queue)(job)

    def _publish(payload: dict[str, Any]) -> Any:
        return broker.publish(payload, queue=_queue, persist=True)

elif _BROKER == "redis":
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(config.REDIS_URL)
    broker.subscriber(stream=StreamSub(_QUEUE, group=_GROUP, consumer="worker"), max_workers=CONCURRENCY)(job)

    def _publish(payload: dict[str, Any]) -> Any:
        return broker.publish(payload, stream=_QUEUE)

elif _BROKER == "kafka":
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(config.KAFKA_SERVERS)
    broker.subscriber(
        _QUEUE,
        group_id=_GROUP,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        max_workers=CONCURRENCY,
    )(job)

    def _publish(payload: dict[str, Any]) -> Any:
        return broker.publish(payload, _QUEUE)

else:
    from faststream.nats import JStream, NatsBroker, PullSub

    broker = NatsBroker(config.NATS_URL)
    _stream = JStream(_QUEUE, subjects=[_QUEUE])
    broker.subscriber(
        _QUEUE, stream=_stream, pull_sub=PullSub(batch_size=100), durable=_GROUP, max_workers=CONCURRENCY
    )(job)

    def _publish(payload: dict[str, Any]) -> Any:
        return broker.publish(payload, _QUEUE, stream=_QUEUE)


app = FastStream(broker)


def settings() -> str:
    return {
        "rabbitmq": "1 process; prefetch unlimited (default); ack after the handler (default); "
        "`persist=True`, publisher confirms (default); 100 publishes in flight",
        "redis": "1 process; stream + consumer group, ack after the handler; `max_workers=10`; "
        "100 publishes in flight",
        "kafka": "1 process; group subscriber from the earliest offset, `AckPolicy.ACK` (commit after "
        "the handler; the default commits first), `max_workers=10`; 100 publishes in flight; 4 partitions",
        "nats": "1 process; durable pull subscriber, `PullSub(batch_size=100)`, ack after the handler; "
        "`max_workers=10`; 100 publishes in flight",
    }[_BROKER]


def worker_command() -> list[str]:
    return [executable("faststream"), "run", f"{__name__}:app", "--log-level", "warning"]


async def _prepare() -> None:
    """Declare what the worker will consume from, so that the messages sent before it starts wait."""
    if _BROKER == "rabbitmq":
        await broker.declare_queue(_queue)
    elif _BROKER == "kafka":
        from bench.suite.systems.raw_kafka import create_topic

        await create_topic(_QUEUE)
    elif _BROKER == "redis":
        from redis.exceptions import ResponseError

        client = broker.config.connection.client  # type: ignore[attr-defined]
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await client.xgroup_create(_QUEUE, _GROUP, id="0", mkstream=True)
    else:
        import nats

        client = await nats.connect(config.NATS_URL)
        await client.jetstream().add_stream(config=_stream.config, subjects=[_QUEUE])
        await client.close()


async def enqueue(count: int) -> float:
    async with broker:
        await broker.connect()
        await _prepare()
        return await enqueue_in_flight(count, lambda n: _publish({"n": n, "sent": 0.0}))


async def pace(count: int, rate: float) -> None:
    async with broker:
        await broker.connect()
        await pace_async(count, rate, lambda n, sent: _publish({"n": n, "sent": sent}))


async def cleanup() -> None:
    if _BROKER == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(config.RABBITMQ_URL)
        async with connection:
            await (await connection.channel()).queue_delete(_QUEUE)
    elif _BROKER == "kafka":
        from bench.suite.systems.raw_kafka import delete_topics_of_run

        await delete_topics_of_run()
    elif _BROKER == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(config.REDIS_URL)
        await client.delete(_QUEUE)
        await client.aclose()
    else:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(config.NATS_URL)
        with contextlib.suppress(NotFoundError):
            await client.jetstream().delete_stream(_QUEUE)
        await client.close()
