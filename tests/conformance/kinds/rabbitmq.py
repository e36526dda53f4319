from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.conftest import require_service

from . import ChannelFactory, ChannelKind

URL = "amqp://guest:guest@127.0.0.1:5672/"


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    import aiormq

    from tidings.channels.rabbitmq import RabbitMQChannel
    from tidings.channels.rabbitmq._topology import Topology

    names: list[str] = []

    def new(name: str | None = None, *, lease_seconds: float = 30.0) -> RabbitMQChannel:
        name = name or f"conformance-{uuid.uuid4().hex[:12]}"
        names.append(name)
        return RabbitMQChannel(name, url=URL, lease_seconds=lease_seconds)

    try:
        yield ChannelFactory(new=new, recipe=("tidings.channels.rabbitmq:RabbitMQChannel", {"url": URL}))
    finally:
        # Every queue and exchange the factory's channels declared goes, whatever the test did.
        async with aiormq.connect(URL) as connection:
            channel = await connection.channel()
            for name in dict.fromkeys(names):
                await Topology(name, max_priority=10).delete(channel)


KIND = ChannelKind(name="rabbitmq", open=_open, marks=[pytest.mark.rabbitmq])
