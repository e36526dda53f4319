"""The Kafka channel rides out a broker that goes away and comes back.

Tansu keeps everything in memory, so the broker that comes back is empty (no topics, no groups):
that is harsher than a Kafka restart, and what is tested is that sending and receiving resume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from tests.conftest import skip_or_fail
from tests.kafka_server import CONSUMER_TIMINGS, KafkaServer, ServerUnavailable, start_tansu

from tidings._message import Envelope
from tidings.channels.kafka import KafkaChannel

from .conftest import environment

pytestmark = pytest.mark.kafka


@pytest.fixture
def private_server(kafka_server: KafkaServer) -> Iterator[list[KafkaServer]]:
    """A broker of the test's own (in a list, so that the test can replace it after a restart)."""
    try:
        servers = [start_tansu()]
    except ServerUnavailable as error:
        skip_or_fail(f"a second Tansu could not be started: {error}")
    yield servers
    servers[-1].stop()


async def receive_one(channel: KafkaChannel, timeout: float) -> list[Envelope]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries = await channel.receive(1, timeout=0.5)
        if deliveries:
            await channel.ack(deliveries)
            return [d.envelope for d in deliveries]
    return []


async def test_sending_and_receiving_resume_after_the_broker_comes_back(
    private_server: list[KafkaServer],
) -> None:
    server = private_server[0]
    port = int(server.bootstrap_servers.rpartition(":")[2])
    channel = KafkaChannel("resilient", bootstrap_servers=server.bootstrap_servers, **CONSUMER_TIMINGS)
    await channel.connect(environment())
    try:
        await channel.send([Envelope(b"before", {"tidings.id": "m-1"})])
        assert [e.body for e in await receive_one(channel, 10)] == [b"before"]

        server.stop()
        await asyncio.sleep(0.5)
        private_server.append(start_tansu(port))
        await channel.send([Envelope(b"after", {"tidings.id": "m-2"})])

        assert [e.body for e in await receive_one(channel, 30)] == [b"after"]
    finally:
        await channel.close()
