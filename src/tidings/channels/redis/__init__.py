"""The Redis channel. Importing this package never imports redis-py; constructing a channel does."""

from __future__ import annotations

from .channel import RedisChannel
from .deduplication import RedisDeduplicationStore

__all__ = ["RedisChannel", "RedisDeduplicationStore"]
