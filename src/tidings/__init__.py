"""tidings: move any command or event handler to a queue with one decorator, safely.

The public API is flat: everything a handler author or app author needs is importable from here.
Broker channels are reachable here too, but their modules (and drivers) load only on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tidings._app import App, CombinedChannel
from tidings._buses import CommandBus, EventBus, QueryBus
from tidings._clock import Clock, ManualClock, SystemClock
from tidings._context import MessageContext
from tidings._decorators import (
    asynchronous,
    command_handler,
    delayed,
    event_handler,
    priority,
    query_handler,
    time_to_live,
    with_middleware,
)
from tidings._message import Envelope, Headers, named
from tidings._registry import Endpoint, Header
from tidings._schedules import scheduled
from tidings.channels import Channel, InMemoryChannel
from tidings.dead_letter import DeadLetter, DeadLetterFilter, DeadLetterStore
from tidings.exceptions import (
    ConfigurationError,
    HandlerNotFound,
    MessageError,
    SerializationError,
    TidingsError,
)
from tidings.middleware import Middleware, scoped
from tidings.middleware.deduplication import DeduplicationStore, deduplicated
from tidings.middleware.retries import Backoff, RetryPolicy, retry
from tidings.middleware.timeout import handler_timeout

if TYPE_CHECKING:
    from tidings.channels.kafka import KafkaChannel as KafkaChannel
    from tidings.channels.nats import NatsChannel as NatsChannel
    from tidings.channels.rabbitmq import RabbitMQChannel as RabbitMQChannel
    from tidings.channels.redis import RedisChannel as RedisChannel
    from tidings.channels.sql import SqlChannel as SqlChannel
    from tidings.channels.sqs import SqsChannel as SqsChannel

__version__ = "0.1.0"

__all__ = [
    "App",
    "Backoff",
    "Channel",
    "Clock",
    "CombinedChannel",
    "CommandBus",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterStore",
    "DeduplicationStore",
    "Endpoint",
    "Envelope",
    "EventBus",
    "HandlerNotFound",
    "Header",
    "Headers",
    "InMemoryChannel",
    "ManualClock",
    "MessageContext",
    "MessageError",
    "Middleware",
    "QueryBus",
    "RetryPolicy",
    "SerializationError",
    "SystemClock",
    "TidingsError",
    "asynchronous",
    "command_handler",
    "deduplicated",
    "delayed",
    "event_handler",
    "handler_timeout",
    "named",
    "priority",
    "query_handler",
    "retry",
    "scheduled",
    "scoped",
    "time_to_live",
    "with_middleware",
]

# Broker channels stay out of __all__ so that `from tidings import *` never loads a broker module.
_LAZY = {
    "SqlChannel": "tidings.channels.sql",
    "RedisChannel": "tidings.channels.redis",
    "RabbitMQChannel": "tidings.channels.rabbitmq",
    "KafkaChannel": "tidings.channels.kafka",
    "NatsChannel": "tidings.channels.nats",
    "SqsChannel": "tidings.channels.sqs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tidings' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
