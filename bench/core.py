"""Core dispatch cost, next to a direct function call as the limit.

    .venv/bin/python bench/core.py [--rounds 5]

Workloads: a sync command round trip (`await commands.send`), an event published to 3 sync handlers,
and asynchronous publish + consume through the in-memory channel (end to end: encode, enqueue, receive,
decode, handle, ack). Each figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import time
from dataclasses import dataclass

from tidings import App, InMemoryChannel, asynchronous, command_handler, event_handler


@dataclass
class Add:
    a: int
    b: int


@dataclass
class Added:
    total: int


async def direct_call(count: int) -> float:
    async def add(command: Add) -> int:
        return command.a + command.b

    started = time.perf_counter()
    for n in range(count):
        await add(Add(n, 1))
    return count / (time.perf_counter() - started)


async def command_round_trip(count: int) -> float:
    @command_handler
    async def add(command: Add) -> int:
        return command.a + command.b

    async with App("bench", handlers=[add]) as app:
        send = app.commands.send
        started = time.perf_counter()
        for n in range(count):
            await send(Add(n, 1))
        return count / (time.perf_counter() - started)


async def direct_three_calls(count: int) -> float:
    totals = [0]

    async def one(event: Added) -> None:
        totals[0] += event.total

    started = time.perf_counter()
    for n in range(count):
        event = Added(n)
        await one(event)
        await one(event)
        await one(event)
    return count / (time.perf_counter() - started)


async def event_to_three_handlers(count: int) -> float:
    totals = [0]

    @event_handler
    async def first(event: Added) -> None:
        totals[0] += event.total

    @event_handler
    async def second(event: Added) -> None:
        totals[0] += event.total

    @event_handler
    async def third(event: Added) -> None:
        totals[0] += event.total

    async with App("bench", handlers=[first, second, third]) as app:
        publish = app.events.publish
        started = time.perf_counter()
        for n in range(count):
            await publish(Added(n))
        return count / (time.perf_counter() - started)


async def asynchronous_publish_and_consume(count: int) -> float:
    handled = [0]

    @asynchronous("work")
    @event_handler
    async def on_added(event: Added) -> None:
        handled[0] += 1

    app = App("bench", handlers=[on_added], channels=[InMemoryChannel("work")])
    async with app:
        publish = app.events.publish
        started = time.perf_counter()
        for n in range(count):
            await publish(Added(n))
        await app.run("work", stop_when_empty=True, concurrency=100, batch_size=100)
        elapsed = time.perf_counter() - started
    assert handled[0] == count, handled[0]
    return count / elapsed


WORKLOADS = [
    ("direct call (limit)", direct_call, 200_000),
    ("sync command round trip", command_round_trip, 200_000),
    ("direct call x3 (limit)", direct_three_calls, 100_000),
    ("event to 3 sync handlers", event_to_three_handlers, 100_000),
    ("async publish + consume, in-memory", asynchronous_publish_and_consume, 50_000),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    results: dict[str, list[float]] = {name: [] for name, _, _ in WORKLOADS}
    for _ in range(rounds):  # workloads alternate within each round
        for name, workload, count in WORKLOADS:
            gc.collect()
            results[name].append(asyncio.run(workload(count)))
    print(f"Python {platform.python_version()}, {rounds} rounds, median msgs/s\n")
    print("| workload | messages | median msgs/s | min | max |")
    print("|---|---:|---:|---:|---:|")
    for name, _, count in WORKLOADS:
        values = results[name]
        print(
            f"| {name} | {count:,} | {statistics.median(values):,.0f} | {min(values):,.0f} | "
            f"{max(values):,.0f} |"
        )


if __name__ == "__main__":
    main()
