"""Channels: the contract, and the in-memory channel.

Broker channels live in their own subpackages and are imported only when used:
`tidings.channels.sql.SqlChannel`, `tidings.channels.redis.RedisChannel`,
`tidings.channels.rabbitmq.RabbitMQChannel`, ... (also reachable as `tidings.SqlChannel` etc.).
"""

from __future__ import annotations

from tidings.channels.base import Capabilities, Channel, ChannelEnvironment, Delivery
from tidings.channels.memory import InMemoryChannel

__all__ = ["Capabilities", "Channel", "ChannelEnvironment", "Delivery", "InMemoryChannel"]
