"""Fixtures for the NATS channel's integration tests: connected channels under a throw-away prefix,
a proxy whose connections a test can cut, and a private NATS server a test may kill and restart."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.channels import opening_channels
from tests.conformance.kinds.nats import delete_streams
from tests.servers import installed, server_url_fixture

pytest.importorskip("nats", reason="the 'nats' extra is not installed")

from nats_support import NatsServer, OpenChannel, Proxy

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

    def make(*, name: str = default_name, lease_seconds: float = 30.0, url: str = nats_url) -> NatsChannel:
        return NatsChannel(name, url=url, lease_seconds=lease_seconds, prefix=prefix)

    async with opening_channels(make, "nats-integration") as open_channel:
        yield open_channel


@pytest.fixture
async def proxy(nats_url: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(4222)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
def private_nats() -> Iterator[NatsServer]:
    binary = installed("nats-server", also_in="/usr/sbin:/usr/local/bin")
    with tempfile.TemporaryDirectory(prefix="tidings-nats-") as directory:
        server = NatsServer(binary, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.kill()
