from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.conftest import require_service
from tidings.channels.base import Channel

from . import ChannelFactory, ChannelKind

REDIS_URL = "redis://127.0.0.1:6379/0"


async def delete_keys(prefix: str) -> None:
    """Remove every key a test's channels left behind under their prefix."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    require_service("Redis", "127.0.0.1", 6379)
    pytest.importorskip("redis", reason="the 'redis' extra is not installed")
    from tidings.channels.redis import RedisChannel

    # A prefix per factory keeps tests (and helpers running at the same time) apart.
    prefix = f"tidings-test-{uuid.uuid4().hex[:12]}"

    def new(name: str | None = None, *, lease_seconds: float = 30.0) -> Channel:
        return RedisChannel(
            name or f"redis-{uuid.uuid4().hex[:12]}",
            url=REDIS_URL,
            lease_seconds=lease_seconds,
            key_prefix=prefix,
        )

    try:
        yield ChannelFactory(
            new=new,
            recipe=("tidings.channels.redis:RedisChannel", {"url": REDIS_URL, "key_prefix": prefix}),
        )
    finally:
        await delete_keys(prefix)


KIND = ChannelKind(name="redis", open=_open, marks=[pytest.mark.redis])
