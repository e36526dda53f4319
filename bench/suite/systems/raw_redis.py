"""Raw redis-py loops on a list: the limits on Redis (neither acks; a crash loses what was popped).

Producer (both): `LPUSH` pipelines of 100 commands. Workers (`python -m bench.suite.systems.raw_redis
batch|brpop`), one process each:

- *batch*: `RPOP key 100` while the list has messages, `BRPOP` (1 s) to wait when it is empty;
- *brpop*: one `BRPOP` per message, as the simplest Redis worker does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from bench.suite import config, probe
from bench.suite.common import body, decode_job, pace_async, python_module
from redis.asyncio import Redis

BATCH = 100


def settings() -> str:
    if os.environ["BENCH_MODE"] == "batch":
        return "1 process; `RPOP key 100`, `BRPOP` when empty; no ack; producer pipelines 100 `LPUSH`"
    return "1 process; one `BRPOP` per message; no ack; producer pipelines 100 `LPUSH`"


def worker_command() -> list[str]:
    return python_module(__name__, os.environ["BENCH_MODE"])


async def enqueue(count: int) -> float:
    client = Redis.from_url(config.REDIS_URL)
    key = config.queue_name()
    try:
        started = time.perf_counter()
        for first in range(0, count, BATCH):
            pipe = client.pipeline(transaction=False)
            for n in range(first, min(count, first + BATCH)):
                pipe.lpush(key, body(n))
            await pipe.execute()
        return time.perf_counter() - started
    finally:
        await client.aclose()


async def pace(count: int, rate: float) -> None:
    client = Redis.from_url(config.REDIS_URL)
    key = config.queue_name()
    try:
        await pace_async(count, rate, lambda n, sent: client.lpush(key, body(n, sent)))
    finally:
        await client.aclose()


async def cleanup() -> None:
    client = Redis.from_url(config.REDIS_URL)
    try:
        await client.delete(config.queue_name())
    finally:
        await client.aclose()


async def _work(mode: str) -> None:
    client = Redis.from_url(config.REDIS_URL)
    key = config.queue_name()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        if mode == "batch":
            popped = await client.rpop(key, BATCH)
            if popped:
                for payload in popped:
                    probe.handled(decode_job(payload).sent)  # the trivial handler
                continue
        waited = await client.brpop([key], timeout=1)
        if waited:
            probe.handled(decode_job(waited[1]).sent)
    await client.aclose()


if __name__ == "__main__":
    import sys

    asyncio.run(_work(sys.argv[1]))
