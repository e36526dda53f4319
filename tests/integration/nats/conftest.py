"""Fixtures for the NATS channel's integration tests: connected channels under a throw-away prefix,
a proxy whose connections a test can cut, and a private NATS server a test may kill and restart."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.conformance.kinds.nats import delete_streams
from tests.conftest import skip_or_fail
from tests.servers import server_url_fixture

pytest.importorskip("nats", reason="the 'nats' extra is not installed")

from nats_support import NatsServer, OpenChannel, Proxy, environment

from tidings.channels.nats import NatsChannel

URL = "nats://127.0.0.1:4222"


nats_url = server_url_fixture("nats_url", "NATS", 4222, URL)


@pytest.fixture
async def prefix(nats_url: str) -> AsyncIterator[str]:
    """A subject and stream prefix of the test's own; its streams are deleted afterwards."""
    prefix = f"it{uuid.uuid4().hex[:12]}"
    yield prefix
    await delete_streams(prefix, nats_url)


@pytest.fixture
async def open_channel(nats_url: str, prefix: str) -> AsyncIterator[OpenChannel]:
    """Opens connected channels, each on its own connection, all on the same stream by default."""
    default_name = f"it-{uuid.uuid4().hex[:8]}"
    opened: list[NatsChannel] = []

    async def open_channel(
        *, name: str = default_name, lease_seconds: float = 30.0, url: str = nats_url
    ) -> NatsChannel:
        channel = NatsChannel(name, url=url, lease_seconds=lease_seconds, prefix=prefix)
        await channel.connect(environment())
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()


@pytest.fixture
async def proxy(nats_url: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(4222)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
def private_nats() -> Iterator[NatsServer]:
    binary = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/bin")
    if binary is None:
        skip_or_fail("nats-server is not installed; the restart test starts a server of its own")
    with tempfile.TemporaryDirectory(prefix="tidings-nats-") as directory:
        server = NatsServer(binary, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.kill()
