from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.sqs_server import CREDENTIALS, require_sqs_server
from tidings.channels.base import Channel

from . import ChannelFactory, ChannelKind


async def delete_queues(endpoint_url: str, prefix: str) -> None:
    """Remove every queue a test's channels created under their prefix."""
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "sqs", region_name="us-east-1", endpoint_url=endpoint_url, **CREDENTIALS
    ) as client:
        reply = await client.list_queues(QueueNamePrefix=prefix)
        for url in reply.get("QueueUrls", []):
            await client.delete_queue(QueueUrl=url)


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    pytest.importorskip("aiobotocore", reason="the 'sqs' extra is not installed")
    server = require_sqs_server()
    from tidings.channels.sqs import SqsChannel

    # A queue-name prefix per factory keeps tests apart; every channel gets its own queue.
    prefix = f"conformance-{uuid.uuid4().hex[:10]}"
    options = {"endpoint_url": server.endpoint_url, **CREDENTIALS}

    def new(name: str | None = None, *, lease_seconds: float = 30.0) -> Channel:
        return SqsChannel(name or f"{prefix}-{uuid.uuid4().hex[:10]}", lease_seconds=lease_seconds, **options)

    try:
        yield ChannelFactory(new=new, recipe=("tidings.channels.sqs:SqsChannel", options))
    finally:
        await delete_queues(server.endpoint_url, prefix)


KIND = ChannelKind(name="sqs", open=_open, marks=[pytest.mark.sqs])
