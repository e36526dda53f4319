from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tidings.channels.memory import InMemoryChannel

from . import ChannelFactory, ChannelKind


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    def new(name: str | None = None, *, lease_seconds: float = 30.0) -> InMemoryChannel:
        return InMemoryChannel(name or f"memory-{uuid.uuid4().hex[:12]}", lease_seconds=lease_seconds)

    yield ChannelFactory(new=new)


KIND = ChannelKind(name="memory", open=_open, durable=False)
