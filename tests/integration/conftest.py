"""The database each SQL-backed integration test runs on: SQLite, PostgreSQL and MariaDB in turn.

A test module lists the tables it needs in `TABLES` (SQL that creates them if missing); the fixture
creates tidings' schema and those tables, and yields the URL.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from tests.conftest import require_service

from tidings.sql import Database

POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MARIADB = "mysql+aiomysql://root@127.0.0.1:3306/test"


async def prepare_database(url: str, tables: list[str]) -> None:
    database = Database(url)
    try:
        await database.create_schema()
        async with database.transaction() as connection:
            for create in tables:
                await connection.execute(text(create))
    finally:
        await database.close()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    tables: list[str] = getattr(request.module, "TABLES", [])
    if request.param == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite+aiosqlite:///{directory}/integration.db"
            await prepare_database(url, tables)
            yield url
        return
    if request.param == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        url = POSTGRES
    else:
        require_service("MariaDB", "127.0.0.1", 3306)
        url = MARIADB
    await prepare_database(url, tables)
    yield url
