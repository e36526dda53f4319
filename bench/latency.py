"""Latency from `events.publish` to the handler at a steady rate, through a real app and consumer.

    .venv/bin/python bench/latency.py [--rate 200] [--seconds 5] [--rounds 3] [CHANNEL ...]

CHANNEL is any of: memory sqlite postgres mariadb redis rabbitmq (default: all). The consumer runs in the
same process, as `tidings run` would, with default settings. Each round publishes `rate * seconds`
messages evenly spaced; figures are medians over the rounds of each round's p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tidings import App, Channel, InMemoryChannel, asynchronous, event_handler


@dataclass
class Ping:
    sent: float


def _sql(url: str) -> Callable[[str], tuple[Channel, str | None]]:
    def make(name: str) -> tuple[Channel, str | None]:
        from tidings.channels.sql import SqlChannel

        return SqlChannel(name), url

    return make


def _redis(name: str) -> tuple[Channel, str | None]:
    from tidings.channels.redis import RedisChannel

    return RedisChannel(name, key_prefix=f"bench-{uuid.uuid4().hex[:8]}"), None


def _rabbitmq(name: str) -> tuple[Channel, str | None]:
    from tidings.channels.rabbitmq import RabbitMQChannel

    return RabbitMQChannel(name), None


_SQLITE = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/latency.db"
CHANNELS: dict[str, Callable[[str], tuple[Channel, str | None]]] = {
    "memory": lambda name: (InMemoryChannel(name), None),
    "sqlite": _sql(_SQLITE),
    "postgres": _sql("postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    "mariadb": _sql("mysql+aiomysql://root@127.0.0.1:3306/test"),
    "redis": _redis,
    "rabbitmq": _rabbitmq,
}


async def one_round(kind: str, rate: float, seconds: float) -> tuple[float, float]:
    name = f"latency-{uuid.uuid4().hex[:8]}"
    channel, database = CHANNELS[kind](name)
    if database is not None:
        from tidings.sql import Database

        schema = Database(database)
        await schema.create_schema()
        await schema.close()
    latencies: list[float] = []
    total = int(rate * seconds)

    @asynchronous(name)
    @event_handler
    async def pong(event: Ping) -> None:
        latencies.append(time.time() - event.sent)

    app = App("latency", handlers=[pong], channels=[channel], database=database)
    async with app:
        consumer = app.consumer()
        running = asyncio.ensure_future(consumer.run())
        await asyncio.sleep(0.5)  # connected and waiting, as a worker would be
        started = time.perf_counter()
        for number in range(total):
            await asyncio.sleep(max(0.0, started + number / rate - time.perf_counter()))
            await app.events.publish(Ping(time.time()))
        deadline = time.monotonic() + 10
        while len(latencies) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        consumer.stop("done")
        await running
        await channel.purge()
        delete = getattr(channel, "delete", None)  # brokers keep queues; remove this run's
        if delete is not None:
            await delete()
    quantiles = statistics.quantiles(latencies, n=100)
    return quantiles[49] * 1000, quantiles[98] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("channels", nargs="*", default=list(CHANNELS))
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in options.channels}
    for _ in range(options.rounds):
        for kind in options.channels:  # channels alternate within a round
            results[kind].append(await one_round(kind, options.rate, options.seconds))
    print(f"\n{options.rate:g} msgs/s for {options.seconds:g} s, median of {options.rounds} rounds\n")
    print("| channel | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for kind, rounds in results.items():
        p50 = statistics.median(r[0] for r in rounds)
        p99 = statistics.median(r[1] for r in rounds)
        print(f"| {kind} | {p50:.2f} | {p99:.2f} |")


def _run() -> Any:
    return asyncio.run(main())


if __name__ == "__main__":
    _run()
