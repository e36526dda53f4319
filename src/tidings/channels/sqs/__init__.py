"""SQS channels (`pip install 'tidings[sqs]'`); the driver is imported only when one is made."""

from __future__ import annotations

from tidings.channels.sqs.channel import ORDERING_KEY, SqsChannel

__all__ = ["ORDERING_KEY", "SqsChannel"]
