"""Outbox relay throughput: messages forwarded per second from an SQL outbox on PostgreSQL.

    .venv/bin/python bench/outbox_relay.py [--messages 20000] [--rounds 3] [TARGET ...]

TARGET is where the relay forwards to: postgres (an SqlChannel queue in the same database), redis or
rabbitmq (default: all). The outbox is filled first (in transactions of 500 publishes, as handlers
would), then one relay consumer (`tidings run` defaults) forwards everything; the figure is messages
forwarded per second, median over the rounds, targets alternating within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tidings import App, Channel, CombinedChannel, asynchronous, event_handler
from tidings.channels.sql import SqlChannel
from tidings.sql import Database

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@dataclass
class OrderPlaced:
    order_id: int


def _target(kind: str, name: str) -> Channel:
    if kind == "redis":
        from tidings.channels.redis import RedisChannel

        return RedisChannel(name, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    if kind == "rabbitmq":
        from tidings.channels.rabbitmq import RabbitMQChannel

        return RabbitMQChannel(name)
    return SqlChannel(name)


TARGETS: dict[str, Callable[[str], Channel]] = {
    kind: (lambda name, kind=kind: _target(kind, name)) for kind in ("postgres", "redis", "rabbitmq")
}


async def one_round(kind: str, messages: int) -> float:
    outbox, queue = f"outbox-{uuid.uuid4().hex[:8]}", f"queue-{uuid.uuid4().hex[:8]}"
    target = TARGETS[kind](queue)

    @asynchronous("orders")
    @event_handler
    async def on_placed(event: OrderPlaced) -> None: ...

    app = App(
        "relay-bench",
        handlers=[on_placed],
        channels=[SqlChannel(outbox), target, CombinedChannel("orders", [outbox, queue])],
        database=POSTGRES,
    )
    async with app:
        for start in range(0, messages, 500):
            async with app.transaction():
                for number in range(start, min(start + 500, messages)):
                    await app.events.publish(OrderPlaced(number))
        started = time.perf_counter()
        stats = await app.run(outbox, stop_when_empty=True)
        elapsed = time.perf_counter() - started
        assert stats.relayed == messages, stats
        await target.purge()
        delete = getattr(target, "delete", None)
        if delete is not None:
            await delete()
    return messages / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    schema = Database(POSTGRES)
    await schema.create_schema()
    await schema.close()
    results: dict[str, list[float]] = {kind: [] for kind in options.targets}
    for _ in range(options.rounds):
        for kind in options.targets:
            results[kind].append(await one_round(kind, options.messages))
    print(f"\noutbox on PostgreSQL, {options.messages:,} messages, median of {options.rounds} rounds\n")
    print("| relay to | forwarded msgs/s | min | max |")
    print("|---|---:|---:|---:|")
    for kind, rates in results.items():
        print(f"| {kind} | {statistics.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
