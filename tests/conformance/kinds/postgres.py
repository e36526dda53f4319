from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.conftest import require_service

from . import ChannelFactory, ChannelKind
from ._sql import sql_factory

URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    async with sql_factory("postgres", URL) as factory:
        yield factory


KIND = ChannelKind(name="postgres", open=_open, marks=[pytest.mark.postgres])
