"""Deduplication records in Redis, for apps without a database.

One key per record, `<prefix>:dedup:<tracking>:<key>`, set with `SET NX` and an expiry of the retention
window, so Redis purges them itself. Records are shared by every worker using the same Redis.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from typing import TYPE_CHECKING, final

from tidings.exceptions import DriverMissing

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisDeduplicationStore"]


@final
class RedisDeduplicationStore:
    """A `DeduplicationStore` in Redis: `App(deduplication_store=RedisDeduplicationStore(...))`."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        key_prefix: str = "tidings",
        retention: timedelta = timedelta(days=7),
    ) -> None:
        if importlib.util.find_spec("redis") is None:
            raise DriverMissing("RedisDeduplicationStore", "redis", "redis")
        self.url = url
        self.key_prefix = key_prefix
        self.retention_ms = int(retention.total_seconds() * 1000)
        self._client: Redis | None = None

    def _redis(self) -> Redis:
        if self._client is None:
            from redis.asyncio import Redis

            self._client = Redis.from_url(self.url)
        return self._client

    def _key(self, tracking: str, key: str) -> str:
        return f"{self.key_prefix}:dedup:{tracking}:{key}"

    async def contains(self, tracking: str, key: str) -> bool:
        return bool(await self._redis().exists(self._key(tracking, key)))

    async def add(self, tracking: str, key: str, handled_at: float) -> None:
        # NX: a record written by a concurrent copy stands; PX: Redis forgets it after the retention.
        await self._redis().set(self._key(tracking, key), repr(handled_at), nx=True, px=self.retention_ms)

    async def purge(self, older_than: float) -> int:
        return 0  # records expire on their own

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def __repr__(self) -> str:
        return f"RedisDeduplicationStore({self.url!r})"
