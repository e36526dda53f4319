"""Apps on SQS channels: lease extension for long handlers, long delays, FIFO order per key."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from tests.sqs_server import CREDENTIALS, SqsServer

from tidings import App, ConfigurationError, asynchronous, event_handler, priority
from tidings._consumer import ConsumerStats
from tidings.channels.sqs import ORDERING_KEY, SqsChannel

pytestmark = pytest.mark.sqs


@dataclass
class Step:
    order_id: str
    n: int


def channel(sqs_server: SqsServer, queue_prefix: str, **options: Any) -> SqsChannel:
    return SqsChannel(f"{queue_prefix}-app", endpoint_url=sqs_server.endpoint_url, **CREDENTIALS, **options)


async def run_until(app: App, done: Any, *, timeout: float = 20.0, **options: Any) -> ConsumerStats:
    consumer = app.consumer(**options)
    running = asyncio.ensure_future(consumer.run())
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and not running.done():
        await asyncio.sleep(0.02)
    consumer.stop("test done")
    return await running


async def test_a_handler_running_three_leases_long_is_not_handed_to_anyone_else(
    sqs_server: SqsServer, queue_prefix: str
) -> None:
    work = channel(sqs_server, queue_prefix, lease_seconds=1.0)
    runs: list[str] = []

    @asynchronous(work.name)
    @event_handler
    async def slow(event: Step) -> None:
        runs.append(event.order_id)
        await asyncio.sleep(3.0)

    app = App("sqs-app", handlers=[slow], channels=[work])
    async with app:
        await app.events.publish(Step("o-1", 1))
        stats = await run_until(app, lambda: False, timeout=4.5, concurrency=2)

        assert runs == ["o-1"]
        assert stats.handled == 1
        assert await work.depth() == 0


async def test_a_delay_longer_than_the_hop_limit_is_handled_when_due(
    sqs_server: SqsServer, queue_prefix: str
) -> None:
    work = channel(sqs_server, queue_prefix, max_hop_delay=1)
    handled_at: list[float] = []

    @asynchronous(work.name)
    @event_handler
    async def later(event: Step) -> None:
        handled_at.append(time.time())

    app = App("sqs-app", handlers=[later], channels=[work])
    async with app:
        sent = time.time()
        await app.events.publish(Step("o-1", 1), delay=timedelta(seconds=3.5))
        await run_until(app, lambda: bool(handled_at))

    assert handled_at
    assert 3.5 <= handled_at[0] - sent <= 4.0


async def test_on_a_fifo_queue_each_ordering_key_is_handled_in_order_by_concurrent_workers(
    sqs_server: SqsServer, queue_prefix: str
) -> None:
    work = channel(sqs_server, queue_prefix, fifo=True)
    handled: dict[str, list[int]] = {"a": [], "b": []}

    @asynchronous(work.name)
    @event_handler
    async def step(event: Step) -> None:
        await asyncio.sleep(0.01 * (event.n % 3))  # uneven handling times
        handled[event.order_id].append(event.n)

    app = App("sqs-app", handlers=[step], channels=[work])
    async with app:
        for n in range(10):
            for key in ("a", "b"):
                await app.events.publish(Step(key, n), headers={ORDERING_KEY: key})
        await run_until(app, lambda: sum(map(len, handled.values())) == 20, concurrency=4)

    assert handled == {"a": list(range(10)), "b": list(range(10))}


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_a_priority_handler_on_sqs_is_refused_at_start_up(
    sqs_server: SqsServer, queue_prefix: str, fifo: bool
) -> None:
    work = channel(sqs_server, queue_prefix, fifo=fifo)

    @asynchronous(work.name)
    @priority(5)
    @event_handler
    async def urgent(event: Step) -> None: ...

    with pytest.raises(ConfigurationError, match="cannot order by priority"):
        App("sqs-app", handlers=[urgent], channels=[work])
