"""The Kafka channel. Importing this package never imports aiokafka; constructing a channel does."""

from __future__ import annotations

from .channel import KafkaChannel

__all__ = ["KafkaChannel"]
