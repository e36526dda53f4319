from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.conftest import require_service

from . import ChannelFactory, ChannelKind
from ._sql import sql_factory

URL = "mysql+aiomysql://root@127.0.0.1:3306/test"


@asynccontextmanager
async def _open() -> AsyncIterator[ChannelFactory]:
    require_service("MariaDB", "127.0.0.1", 3306)
    async with sql_factory("mariadb", URL) as factory:
        yield factory


KIND = ChannelKind(name="mariadb", open=_open, marks=[pytest.mark.mariadb])
