from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from tests.conftest import require_service

from tidings import App, InMemoryChannel, asynchronous, event_handler
from tidings import headers as h
from tidings.channels.redis import RedisDeduplicationStore


@dataclass
class OrderPlaced:
    order_id: str


async def test_an_app_without_a_database_deduplicates_across_workers_through_redis() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    prefix = f"tidings-test-{uuid.uuid4().hex[:8]}"
    handled: list[str] = []

    def worker() -> App:
        @asynchronous("work")
        @event_handler
        async def ship(event: OrderPlaced) -> None:
            handled.append(event.order_id)

        return App(
            "shop",
            handlers=[ship],
            channels=[InMemoryChannel("work")],
            deduplication_store=RedisDeduplicationStore(key_prefix=prefix),
        )

    first, second = worker(), worker()  # two workers, two processes' worth of state
    async with first, second:
        message_id = str(uuid.uuid4())
        await first.events.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: message_id})
        await second.events.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: message_id})
        await first.run(stop_when_empty=True)
        stats = await second.run(stop_when_empty=True)

    assert handled == ["o-1"]
    assert stats.duplicates == 1


async def test_redis_deduplication_records_expire_after_the_retention() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    store = RedisDeduplicationStore(
        key_prefix=f"tidings-test-{uuid.uuid4().hex[:8]}", retention=timedelta(seconds=1)
    )
    try:
        await store.add("ship", "m-1", 0.0)
        assert await store.contains("ship", "m-1")
        ttl_ms = await store._redis().pttl(store._key("ship", "m-1"))
        assert 0 < ttl_ms <= 1000
    finally:
        await store._redis().delete(store._key("ship", "m-1"))
        await store.close()
