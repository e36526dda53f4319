"""Fixtures for the SQS channel's integration tests: connected channels on fresh queues of the test
process's SQS server, and a private server that a test may stop and start again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("aiobotocore", reason="the 'sqs' extra is not installed")

from aiobotocore.session import get_session
from tests.channels import opening_channels
from tests.conftest import skip_or_fail
from tests.servers import free_port
from tests.sqs_server import CREDENTIALS, ServerUnavailable, SqsServer, require_sqs_server, start_fauxqs

from tidings._clock import Clock, SystemClock
from tidings.channels.base import ChannelEnvironment
from tidings.channels.sqs import SqsChannel

OpenChannel = Callable[..., Awaitable[SqsChannel]]


def environment(clock: Clock | None = None) -> ChannelEnvironment:
    return ChannelEnvironment(app_name="sqs-integration", clock=clock or SystemClock())


@pytest.fixture
def sqs_server() -> SqsServer:
    return require_sqs_server()


@pytest.fixture
async def raw_client(sqs_server: SqsServer) -> AsyncIterator[Any]:
    """A plain aiobotocore client on the same server, to look behind the channel's back."""
    async with get_session().create_client(
        "sqs", region_name="us-east-1", endpoint_url=sqs_server.endpoint_url, **CREDENTIALS
    ) as client:
        yield client


@pytest.fixture
async def queue_prefix(raw_client: Any) -> AsyncIterator[str]:
    """A queue-name prefix of the test's own; its queues are deleted afterwards."""
    prefix = f"it-{uuid.uuid4().hex[:12]}"
    yield prefix
    reply = await raw_client.list_queues(QueueNamePrefix=prefix)
    for url in reply.get("QueueUrls", []):
        await raw_client.delete_queue(QueueUrl=url)


@pytest.fixture
async def open_channel(sqs_server: SqsServer, queue_prefix: str) -> AsyncIterator[OpenChannel]:
    """Opens connected channels; by default all on one queue, each with its own connections."""
    default_name = f"{queue_prefix}-work"

    def make(name: str | None = None, **options: Any) -> SqsChannel:
        options.setdefault("endpoint_url", sqs_server.endpoint_url)
        return SqsChannel(name or default_name, **CREDENTIALS, **options)

    async with opening_channels(make, "sqs-integration") as open_channel:
        yield open_channel


class PrivateServer:
    """A fauxqs server of the test's own on a fixed port, to stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._running: SqsServer | None = None

    def start(self) -> None:
        self._running = start_fauxqs(self.port)

    def stop(self) -> None:
        if self._running is not None:
            self._running.stop()
            self._running = None


@pytest.fixture
def private_server(sqs_server: SqsServer) -> Iterator[PrivateServer]:
    server = PrivateServer()
    try:
        server.start()
    except ServerUnavailable as error:
        skip_or_fail(f"the restart tests need fauxqs (Node.js and npm): {error}")
    try:
        yield server
    finally:
        server.stop()
