"""An app on the Kafka channel: one tenant's events keep their order through a consumer, and a
failing event retries later without holding up the events behind it in its partition."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from tidings import App, Backoff, MessageContext, RetryPolicy, asynchronous, event_handler
from tidings.channels.kafka import KafkaChannel

from .conftest import OpenChannel

pytestmark = pytest.mark.kafka


@dataclass
class Step:
    tenant: str
    n: int


async def test_a_failing_event_retries_later_while_its_tenants_next_events_go_on_in_order(
    open_channel: OpenChannel,
) -> None:
    channel: KafkaChannel = await open_channel(key_header="tenant", partitions=2)
    await channel.close()  # the app connects it again
    seen: list[tuple[str, int, int]] = []

    @asynchronous(channel.name)
    @event_handler
    async def handle(event: Step, context: MessageContext) -> None:
        seen.append((event.tenant, event.n, context.attempt))
        if (event.tenant, event.n) == ("acme", 2) and context.attempt == 1:
            raise RuntimeError("first try fails")

    app = App(
        "kafka-app",
        handlers=[handle],
        channels=[channel],
        retry_policy=RetryPolicy(backoff=Backoff.fixed(1.5)),
    )
    async with app:
        for n in range(6):
            for tenant in ("acme", "globex"):
                await app.events.publish(Step(tenant, n), headers={"tenant": tenant})
        consumer = app.consumer(concurrency=1, batch_size=10)
        running = asyncio.ensure_future(consumer.run())
        deadline = time.monotonic() + 20
        while ("acme", 2, 2) not in seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        consumer.stop("test done")
        await running
        depth = await channel.depth()

    acme = [(n, attempt) for tenant, n, attempt in seen if tenant == "acme"]
    globex = [n for tenant, n, _ in seen if tenant == "globex"]
    assert acme == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (2, 2)]
    assert globex == [0, 1, 2, 3, 4, 5]
    assert depth == 0
