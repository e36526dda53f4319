"""The raw aiokafka loop: the limit on Kafka (a Kafka-compatible Tansu broker here).

A 4-partition topic per run. Producer: `send_and_wait` (acks=all, linger 5 ms), 100 in flight.
Worker (`python -m bench.suite.systems.raw_kafka`), one process: a group consumer from the earliest
offset, `getmany(max_records=100)`, handle the batch, then `commit()` (auto-commit off).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from bench.suite import config, probe
from bench.suite.common import body, decode_job, enqueue_in_flight, pace_async, python_module

PARTITIONS = 4
SETTINGS = (
    "1 process; group consumer, `getmany(max_records=100)`, `commit()` after each batch, "
    "`fetch_max_wait_ms=100`; "
    "producer `send_and_wait` (acks=all, linger 5 ms), 100 in flight; 4 partitions"
)


def worker_command() -> list[str]:
    return python_module(__name__)


async def create_topic(name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=config.KAFKA_SERVERS)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()


async def delete_topics_of_run() -> None:
    """Every topic whose name holds this run's token (the channel's delay topics too)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.KAFKA_SERVERS)
    await admin.start()
    try:
        ours = [topic for topic in await admin.list_topics() if config.token() in topic]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


async def _producer() -> AIOKafkaProducer:
    await create_topic(config.queue_name())
    producer = AIOKafkaProducer(bootstrap_servers=config.KAFKA_SERVERS, acks="all", linger_ms=5)
    await producer.start()
    return producer


async def enqueue(count: int) -> float:
    producer = await _producer()
    topic = config.queue_name()
    try:
        return await enqueue_in_flight(count, lambda n: producer.send_and_wait(topic, body(n)))
    finally:
        await producer.stop()


async def pace(count: int, rate: float) -> None:
    producer = await _producer()
    topic = config.queue_name()
    try:
        await pace_async(count, rate, lambda n, sent: producer.send_and_wait(topic, body(n, sent)))
    finally:
        await producer.stop()


async def cleanup() -> None:
    await delete_topics_of_run()


async def _work() -> None:
    consumer = AIOKafkaConsumer(
        config.queue_name(),
        bootstrap_servers=config.KAFKA_SERVERS,
        group_id="raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,  # as KafkaChannel: the default 500 ms is what an idle fetch costs on Tansu
    )
    await consumer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=1000, max_records=100)
        for records in batches.values():
            for record in records:
                probe.handled(decode_job(record.value or b"").sent)  # the trivial handler
        if batches:
            await consumer.commit()
    await consumer.stop()


if __name__ == "__main__":
    asyncio.run(_work())
