"""Shared set-up of the SQL channel kinds: the schema exists, each channel gets a fresh name."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tidings.channels.sql import SqlChannel
from tidings.sql import Database

from . import ChannelFactory


@asynccontextmanager
async def sql_factory(prefix: str, url: str) -> AsyncIterator[ChannelFactory]:
    database = Database(url)
    try:
        await database.create_schema()
    finally:
        await database.close()

    def new(name: str | None = None, *, lease_seconds: float = 30.0) -> SqlChannel:
        # No database= here: the channel finds the app's database in its environment.
        return SqlChannel(name or f"{prefix}-{uuid.uuid4().hex[:12]}", lease_seconds=lease_seconds)

    yield ChannelFactory(new=new, database=url, recipe=("tidings.channels.sql:SqlChannel", {}))
