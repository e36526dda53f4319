"""Fixtures for the Kafka channel's integration tests: the test process's Tansu broker, connected
channels on fresh topics (deleted afterwards), and a plain aiokafka producer to write behind the
channel's back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("aiokafka", reason="the 'kafka' extra is not installed")

from aiokafka import AIOKafkaProducer
from tests.channels import opening_channels
from tests.conformance.kinds.kafka import delete_topics
from tests.kafka_server import CONSUMER_TIMINGS, KafkaServer, kafka_server

from tidings._clock import Clock, SystemClock
from tidings.channels.base import ChannelEnvironment
from tidings.channels.kafka import KafkaChannel

__all__ = ["OpenChannel", "kafka_server"]

OpenChannel = Callable[..., Awaitable[KafkaChannel]]


def environment(clock: Clock | None = None) -> ChannelEnvironment:
    return ChannelEnvironment(app_name="kafka-integration", clock=clock or SystemClock())


@pytest.fixture
async def topic_prefix(kafka_server: KafkaServer) -> AsyncIterator[str]:
    """A topic-name prefix of the test's own; its topics are deleted afterwards."""
    prefix = f"it-{uuid.uuid4().hex[:12]}"
    yield prefix
    await delete_topics(kafka_server.bootstrap_servers, prefix)


@pytest.fixture
async def open_channel(kafka_server: KafkaServer, topic_prefix: str) -> AsyncIterator[OpenChannel]:
    """Opens connected channels; by default all on one topic (and group), each its own member."""
    default_name = f"{topic_prefix}-work"

    def make(name: str | None = None, **options: Any) -> KafkaChannel:
        return KafkaChannel(
            name or default_name,
            bootstrap_servers=kafka_server.bootstrap_servers,
            **{**CONSUMER_TIMINGS, **options},
        )

    async with opening_channels(make, "kafka-integration") as open_channel:
        yield open_channel


@pytest.fixture
async def raw_producer(kafka_server: KafkaServer) -> AsyncIterator[Any]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers, acks="all")
    await producer.start()
    yield producer
    await producer.stop()
