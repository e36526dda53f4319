"""tidings reads database URLs without SQLAlchemy, and must read them exactly as SQLAlchemy does."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url

from tidings.exceptions import ConfigurationError
from tidings.sql import Database
from tidings.sql._url import parse_url

URLS = [
    "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "postgresql+asyncpg://app:s3cret@db.internal/shop",
    "postgresql+asyncpg://app:p%40ss%2Fw%3Ard@db:6543/my%20db",
    "postgresql+asyncpg://app:pa/ss?#word@db/shop",
    "postgresql+asyncpg://app@[::1]:5433/shop",
    "postgresql+asyncpg://app@[fe80::1]/shop",
    "postgresql+asyncpg://app@localhost/shop?ssl=require&command_timeout=5",
    "postgresql+asyncpg://app@localhost/shop?prepared_statement_cache_size=0",
    "postgresql+asyncpg://app@localhost/shop?blank=&application_name=worker",
    "postgresql+asyncpg:///shop",
    "postgresql+asyncpg://",
    "postgresql+asyncpg://app@localhost",
    "postgresql+asyncpg://app@localhost?ssl=prefer",
    "postgresql+asyncpg://:only-password@localhost/shop",
    "mysql+aiomysql://root@127.0.0.1:3306/test?charset=utf8mb4",
    "sqlite+aiosqlite:///relative.db",
    "sqlite+aiosqlite:////absolute/path/app.db",
    "sqlite+aiosqlite://",
    "sqlite+aiosqlite:///file:shared?mode=memory&cache=shared&uri=true",
]


def sqlalchemys_asyncpg_arguments(url: str, connect_args: dict[str, Any]) -> dict[str, Any]:
    """What SQLAlchemy's asyncpg dialect hands `asyncpg.connect` for `url` (its adapter keeps the
    prepared-statement settings to itself)."""
    _positional, arguments = PGDialect_asyncpg().create_connect_args(make_url(url))
    arguments.update(connect_args)
    for own in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        arguments.pop(own, None)
    return arguments


@pytest.mark.parametrize("url", URLS)
def test_every_part_of_a_url_reads_as_sqlalchemy_reads_it(url: str) -> None:
    ours, theirs = parse_url(url), make_url(url)

    assert (ours.drivername, ours.username, ours.password) == (
        theirs.drivername,
        theirs.username,
        theirs.password,
    )
    assert (ours.host, ours.port, ours.database) == (theirs.host, theirs.port, theirs.database)
    assert dict(ours.query) == dict(theirs.query)


@pytest.mark.parametrize("url", [url for url in URLS if url.startswith("postgresql")])
def test_driver_connections_get_the_arguments_the_engine_gives_asyncpg(url: str) -> None:
    connect_args = {"server_settings": {"application_name": "worker"}, "timeout": 3}

    ours = parse_url(url).asyncpg_arguments(connect_args)

    assert ours == sqlalchemys_asyncpg_arguments(url, connect_args)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app@/shop?host=db1:5432&host=db2:5432",
        "postgresql+asyncpg://app@/shop?host=db1,db2&port=5432,5433",
        "postgresql+asyncpg://app@/shop?host=/var/run/postgresql",
    ],
)
def test_a_url_whose_query_composes_the_hosts_leaves_opening_connections_to_the_engine(url: str) -> None:
    assert parse_url(url).asyncpg_arguments({}) is None


def test_a_custom_connection_creator_leaves_opening_connections_to_the_engine() -> None:
    database = Database(
        "postgresql+asyncpg://app@db/shop",
        engine_options={"connect_args": {"async_creator_fn": lambda **_: None}},
    )

    assert database.asyncpg_arguments() is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app:s3cret@db.internal:5432/shop",
        "postgresql+asyncpg://app:p%40ss@[::1]/shop?ssl=require",
        "mysql+aiomysql://root:s3cret@127.0.0.1:3306/test",
        "postgresql+asyncpg://app@db/shop",
    ],
)
def test_a_database_shows_its_url_with_the_password_hidden_as_sqlalchemy_does(url: str) -> None:
    assert Database(url).safe_url == make_url(url).render_as_string(hide_password=True)


def test_a_url_without_a_driver_gets_the_default_one_and_keeps_everything_else() -> None:
    database = Database("postgresql://app:s3cret@db:5433/shop?ssl=require")

    assert database.driver_name == "asyncpg"
    assert database.url == make_url("postgresql+asyncpg://app:s3cret@db:5433/shop?ssl=require")
    assert database.safe_url == "postgresql+asyncpg://app:***@db:5433/shop?ssl=require"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("localhost/shop", "not a database URL"),
        ("postgresql+asyncpg://app@db:port/shop", "port"),
        ("oracle://u@localhost/db", "oracle"),
        ("postgresql+psycopg2://u@localhost/db", "asyncio"),
    ],
)
def test_a_malformed_or_unsupported_url_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Database(text)
