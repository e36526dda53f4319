"""Celery on RabbitMQ (py-amqp) or Redis, run with `celery worker`.

Settings beyond the defaults, for the same guarantees as the others: `task_acks_late` (ack after the
task ran), publisher confirms on RabbitMQ (`confirm_publish`), results ignored. Queues are durable and
messages persistent by default. Worker: prefork pool with its default concurrency (one process per
core: 2 here) and prefetch multiplier (4), `--loglevel WARNING`. Producer: `job.delay(...)` in a loop
(the API blocks).
"""

from __future__ import annotations

from bench.suite import config, probe
from bench.suite.common import enqueue_in_loop, executable, pace_sync
from celery import Celery

_QUEUE = config.queue_name()
_ON_RABBITMQ = config.broker() == "rabbitmq"

app = Celery("bench", broker=config.RABBITMQ_URL if _ON_RABBITMQ else config.REDIS_URL)
app.conf.update(
    task_default_queue=_QUEUE,
    task_acks_late=True,
    task_ignore_result=True,
    broker_transport_options={"confirm_publish": True} if _ON_RABBITMQ else {},
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.job")
def job(n: int, sent: float) -> None:
    probe.handled(sent)  # the trivial handler


def settings() -> str:
    confirms = "publisher confirms (`confirm_publish`), " if _ON_RABBITMQ else ""
    return (
        "prefork, 2 processes (default: one per core), prefetch multiplier 4 (default); "
        f"`task_acks_late=True`; {confirms}`delay()` in a loop"
    )


def worker_command() -> list[str]:
    return [executable("celery"), "-A", __name__, "worker", "-Q", _QUEUE, "--loglevel", "WARNING"]


def enqueue(count: int) -> float:
    job.delay(-1, 0.0)  # connected and declared, as a running producer is
    return enqueue_in_loop(count - 1, lambda n: job.delay(n, 0.0))


def pace(count: int, rate: float) -> None:
    pace_sync(count, rate, lambda n, sent: job.delay(n, sent))


def cleanup() -> None:
    if _ON_RABBITMQ:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(_QUEUE)
            connection.default_channel.exchange_delete(_QUEUE)
        return
    import redis

    client = redis.Redis.from_url(config.REDIS_URL)
    client.delete(
        _QUEUE,
        f"_kombu.binding.{_QUEUE}",
        f"_kombu.binding_permanent.{_QUEUE}",
        "_kombu.binding_deadlines",
        "unacked",
        "unacked_index",
        "unacked_mutex",
    )
    client.close()
