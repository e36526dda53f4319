from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from . import ChannelFactory, ChannelKind
from ._sql import sql_factory


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    with tempfile.TemporaryDirectory(prefix="tidings-sqlite-") as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'conformance.db'}"
        async with sql_factory("sqlite", url) as factory:
            yield factory


KIND = ChannelKind(name="sqlite", open=_open)
