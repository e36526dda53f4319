"""The NATS JetStream channel. Importing this package never imports nats-py; constructing a channel does."""

from __future__ import annotations

from .channel import NatsChannel

__all__ = ["NatsChannel"]
