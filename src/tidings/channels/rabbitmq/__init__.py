"""RabbitMQ channels (`pip install 'tidings[rabbitmq]'`); the driver is imported only when one is made."""

from __future__ import annotations

from tidings.channels.rabbitmq.channel import RabbitMQChannel

__all__ = ["RabbitMQChannel"]
