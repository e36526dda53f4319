from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.kafka_server import CONSUMER_TIMINGS, require_kafka_server
from tidings.channels.base import Channel

from . import ChannelFactory, ChannelKind


async def delete_topics(bootstrap_servers: str, prefix: str) -> None:
    """Remove every topic a test's channels created under their prefix (the broker keeps them in memory)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        topics = [topic for topic in await admin.list_topics() if topic.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    pytest.importorskip("aiokafka", reason="the 'kafka' extra is not installed")
    server = require_kafka_server()
    from tidings.channels.kafka import KafkaChannel

    # Every channel gets a fresh topic, and so a fresh group (named after the topic).
    prefix = f"conformance-{uuid.uuid4().hex[:10]}"
    options = {"bootstrap_servers": server.bootstrap_servers, **CONSUMER_TIMINGS}

    def new(name: str | None = None, *, lease_seconds: float = 30.0) -> Channel:
        return KafkaChannel(
            name or f"{prefix}-{uuid.uuid4().hex[:10]}", lease_seconds=lease_seconds, **options
        )

    try:
        yield ChannelFactory(new=new, recipe=("tidings.channels.kafka:KafkaChannel", options))
    finally:
        await delete_topics(server.bootstrap_servers, prefix)


KIND = ChannelKind(name="kafka", open=_open, marks=[pytest.mark.kafka])
