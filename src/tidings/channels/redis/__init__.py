"""The Redis channel. Importing this package never imports redis-py; constructing a channel does."""

from __future__ import annotations

from .channel import RedisChannel

__all__ = ["RedisChannel"]
