"""The raw aiobotocore loop: the limit on SQS (the fauxqs emulator here, far slower than SQS).

A standard queue per run. Producer: `SendMessageBatch` of 10, 10 calls in flight (100 messages).
Worker (`python -m bench.suite.systems.raw_sqs`), one process: 10 concurrent loops of
`ReceiveMessage(MaxNumberOfMessages=10, WaitTimeSeconds=1)`, handle, `DeleteMessageBatch`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiobotocore.session import get_session
from bench.suite import config, probe
from bench.suite.common import body, decode_job, pace_async, python_module

POLLERS = 10
SETTINGS = (
    "1 process; 10 concurrent `ReceiveMessage(10)` long polls, `DeleteMessageBatch` after handling; "
    "producer `SendMessageBatch(10)`, 10 calls in flight"
)
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}


def worker_command() -> list[str]:
    return python_module(__name__)


@asynccontextmanager
async def _client() -> AsyncIterator[Any]:
    async with get_session().create_client("sqs", endpoint_url=config.SQS_URL, **CREDENTIALS) as client:
        yield client


async def _queue_url(client: Any) -> str:
    return str((await client.create_queue(QueueName=config.queue_name()))["QueueUrl"])


async def enqueue(count: int) -> float:
    async with _client() as client:
        url = await _queue_url(client)

        async def send(first: int) -> None:
            entries = [
                {"Id": str(n), "MessageBody": body(n).decode()} for n in range(first, min(count, first + 10))
            ]
            await client.send_message_batch(QueueUrl=url, Entries=entries)

        started = time.perf_counter()
        for first in range(0, count, 100):
            await asyncio.gather(*(send(start) for start in range(first, min(count, first + 100), 10)))
        return time.perf_counter() - started


async def pace(count: int, rate: float) -> None:
    async with _client() as client:
        url = await _queue_url(client)
        await pace_async(
            count, rate, lambda n, sent: client.send_message(QueueUrl=url, MessageBody=body(n, sent).decode())
        )


async def cleanup() -> None:
    async with _client() as client:
        await client.delete_queue(QueueUrl=await _queue_url(client))


async def _work() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with _client() as client:
        url = await _queue_url(client)

        async def poll() -> None:
            while not stop.is_set():
                reply = await client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
                messages = reply.get("Messages", [])
                for message in messages:
                    probe.handled(decode_job(message["Body"].encode()).sent)  # the trivial handler
                if messages:
                    entries = [
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
                    ]
                    await client.delete_message_batch(QueueUrl=url, Entries=entries)

        await asyncio.gather(*(poll() for _ in range(POLLERS)))


if __name__ == "__main__":
    asyncio.run(_work())
