"""Dramatiq on RabbitMQ (pika) or Redis, run with the `dramatiq` command.

Settings beyond the defaults: publisher confirms on RabbitMQ (`confirm_delivery=True`); a Redis
namespace per run. Dramatiq acks after the actor ran and declares durable queues with persistent
messages by default. Worker: its defaults, 2 processes (one per core) of 8 threads, prefetch 2 per
thread. Producer: `job.send(...)` in a loop (the API blocks).
"""

from __future__ import annotations

import dramatiq
from bench.suite import config, probe
from bench.suite.common import enqueue_in_loop, executable, pace_sync

_QUEUE = config.queue_name()
_ON_RABBITMQ = config.broker() == "rabbitmq"

if _ON_RABBITMQ:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=config.RABBITMQ_URL, confirm_delivery=True)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=config.REDIS_URL, namespace=_QUEUE)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=_QUEUE, actor_name="job")
def job(n: int, sent: float) -> None:
    probe.handled(sent)  # the trivial handler


def settings() -> str:
    confirms = "publisher confirms (`confirm_delivery=True`); " if _ON_RABBITMQ else ""
    return f"2 processes \u00d7 8 threads (defaults: one process per core); {confirms}`send()` in a loop"


def worker_command() -> list[str]:
    return [executable("dramatiq"), __name__, "--processes", "2", "--threads", "8", "--queues", _QUEUE]


def enqueue(count: int) -> float:
    job.send(-1, 0.0)  # connected and declared, as a running producer is
    return enqueue_in_loop(count - 1, lambda n: job.send(n, 0.0))


def pace(count: int, rate: float) -> None:
    pace_sync(count, rate, lambda n, sent: job.send(n, sent))


def cleanup() -> None:
    if _ON_RABBITMQ:
        channel = broker.channel  # type: ignore[attr-defined]
        for queue in (_QUEUE, f"{_QUEUE}.DQ", f"{_QUEUE}.XQ"):
            channel.queue_delete(queue)
        broker.close()
        return
    import redis

    client = redis.Redis.from_url(config.REDIS_URL)
    keys = list(client.scan_iter(match=f"{_QUEUE}*"))
    if keys:
        client.delete(*keys)
    client.close()
