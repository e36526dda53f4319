from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.conftest import require_service
from tidings.channels.base import Channel

from . import ChannelFactory, ChannelKind

URL = "nats://127.0.0.1:4222"


async def delete_streams(prefix: str, url: str = URL) -> None:
    """Remove every stream whose subjects lie under `prefix` (those of a factory's channels)."""
    import nats

    client = await nats.connect(url)
    try:
        names: list[str] = []
        while True:
            request = {"subject": f"{prefix}.>", "offset": len(names)}
            reply = json.loads(
                (await client.request("$JS.API.STREAM.NAMES", json.dumps(request).encode())).data
            )
            page = reply.get("streams") or []
            names += page
            if not page or len(names) >= reply.get("total", 0):
                break
        js = client.jetstream()
        for name in names:
            await js.delete_stream(name)
    finally:
        await client.close()


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    require_service("NATS", "127.0.0.1", 4222)
    pytest.importorskip("nats", reason="the 'nats' extra is not installed")
    from tidings.channels.nats import NatsChannel

    # A prefix per factory keeps tests (and helpers running at the same time) apart.
    prefix = f"tt{uuid.uuid4().hex[:12]}"

    def new(name: str | None = None, *, lease_seconds: float = 30.0) -> Channel:
        return NatsChannel(
            name or f"nats-{uuid.uuid4().hex[:12]}", url=URL, lease_seconds=lease_seconds, prefix=prefix
        )

    try:
        yield ChannelFactory(
            new=new, recipe=("tidings.channels.nats:NatsChannel", {"url": URL, "prefix": prefix})
        )
    finally:
        await delete_streams(prefix)


KIND = ChannelKind(name="nats", open=_open, marks=[pytest.mark.nats])
