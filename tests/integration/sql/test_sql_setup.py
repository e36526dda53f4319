"""Start-up problems say what is wrong and what to do; the schema is printable and idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from tests.conftest import require_service

from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels.base import ChannelEnvironment
from tidings.channels.sql import SqlChannel
from tidings.channels.sql._wakeup import wakeups_for
from tidings.exceptions import ChannelUnavailable, ConfigurationError, TidingsError
from tidings.sql import SCHEMA_VERSION, Database, DatabaseUnavailable, SchemaMissing, SqlDeduplicationStore

from .conftest import MARIADB_URL, POSTGRES_URL, sender_and_consumer

UNREACHABLE = {
    "postgres": "postgresql+asyncpg://postgres:s3cret-pw@127.0.0.1:1/test",
    "mariadb": "mysql+aiomysql://root:s3cret-pw@127.0.0.1:1/test",
}


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
async def test_an_unreachable_database_names_its_url_without_the_password_and_the_cause(
    kind: str,
) -> None:
    database = Database(UNREACHABLE[kind])

    with pytest.raises(DatabaseUnavailable) as raised:
        await database.connect()

    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert UNREACHABLE[kind].split("://")[0] + "://" in message
    assert ":***@127.0.0.1:1/test" in message
    assert "refused" in message.lower() or "can't connect" in message.lower()
    assert isinstance(raised.value, ChannelUnavailable)
    await database.close()


async def test_a_channel_on_an_unreachable_database_fails_to_connect_naming_itself() -> None:
    channel = SqlChannel("orders", database=UNREACHABLE["postgres"])

    with pytest.raises(ChannelUnavailable) as raised:
        await channel.connect(ChannelEnvironment(app_name="it", clock=SystemClock()))

    assert raised.value.channel == "orders"
    assert "s3cret-pw" not in str(raised.value)


async def test_a_missing_schema_says_to_run_tidings_db_init(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")

    with pytest.raises(SchemaMissing, match=r"tidings db init"):
        await database.connect()
    await database.close()


@contextlib.asynccontextmanager
async def empty_postgres_database() -> AsyncIterator[str]:
    """The URL of a PostgreSQL database of its own, created empty and dropped after."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"tidings_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.postgres
async def test_a_missing_schema_on_postgresql_says_to_run_tidings_db_init() -> None:
    async with empty_postgres_database() as url:
        database = Database(url)
        channel = SqlChannel("orders", database=database)
        with pytest.raises(SchemaMissing, match=r"tidings db init"):
            await channel.connect(ChannelEnvironment(app_name="it", clock=SystemClock()))

        # What a DBA would run, then `tidings db init` again: nothing to do.
        async with database.writing() as connection:
            for statement in statements(database.schema_sql()):
                await connection.exec_driver_sql(statement)
        assert await database.create_schema() == SCHEMA_VERSION
        await channel.connect(ChannelEnvironment(app_name="it", clock=SystemClock()))
        await channel.close()
        await database.close()


async def test_an_older_schema_asks_for_an_upgrade(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    await database.create_schema()
    async with database.writing() as connection:
        await connection.exec_driver_sql("DELETE FROM tidings_schema_version")
        await connection.exec_driver_sql(
            "INSERT INTO tidings_schema_version (version, applied_at) VALUES (0, 0)"
        )

    with pytest.raises(SchemaMissing, match=r"version 0.*tidings db init"):
        await database.connect()
    await database.close()


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "mariadb", "sqlite"])
def test_the_schema_sql_for_each_dialect_creates_the_tables_and_indexes(dialect: str) -> None:
    # The URL points nowhere: printing the SQL never connects.
    sql = Database(UNREACHABLE["postgres"]).schema_sql(dialect)

    assert "CREATE TABLE tidings_messages" in sql
    assert "CREATE TABLE tidings_schema_version" in sql
    assert "CREATE INDEX ix_tidings_messages_claim" in sql
    assert f"VALUES ({SCHEMA_VERSION}," in sql
    if dialect in ("mysql", "mariadb"):
        assert "LONGBLOB" in sql
    elif dialect == "postgresql":
        assert "BYTEA" in sql


def test_the_schema_sql_refuses_an_unknown_dialect() -> None:
    with pytest.raises(ValueError, match="oracle"):
        Database("sqlite://").schema_sql("oracle")


def statements(script: str) -> list[str]:
    without_comments = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    return [statement for statement in without_comments.split(";") if statement.strip()]


async def test_the_schema_sql_runs_as_it_is_on_an_empty_sqlite_database(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'dba.db'}")
    async with database.writing() as connection:
        for statement in statements(database.schema_sql()):
            await connection.exec_driver_sql(statement)

    await database.connect()
    await database.close()


async def test_a_channel_without_a_database_says_where_to_give_one() -> None:
    channel = SqlChannel("orders")

    with pytest.raises(ConfigurationError, match="database"):
        await channel.connect(ChannelEnvironment(app_name="it", clock=SystemClock()))


def test_a_url_with_a_blocking_driver_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="asyncpg"):
        SqlChannel("orders", database="postgresql+psycopg2://u@localhost/db")
    with pytest.raises(ConfigurationError, match="oracle"):
        Database("oracle://u@localhost/db")


async def test_channels_given_the_same_url_share_one_database_through_the_environment(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    setup = Database(url)
    await setup.create_schema()
    await setup.close()
    environment = ChannelEnvironment(app_name="it", clock=SystemClock(), database=url)
    first, second = SqlChannel("first"), SqlChannel("second")
    await first.connect(environment)
    await second.connect(environment)

    assert first.database is second.database
    async with first.database.transaction():
        await first.send([Envelope(b"1", {h.MESSAGE_ID: "a"})])
        await second.send([Envelope(b"2", {h.MESSAGE_ID: "b"})])
    assert await first.depth() == await second.depth() == 1

    await first.close()
    assert second.database.engine is not None  # still open for the second channel
    await second.purge()
    await first.connect(environment)
    await first.purge()
    await first.close()
    await second.close()


async def test_a_channel_can_use_an_engine_the_app_already_has(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    await Database(engine).create_schema()
    channel = SqlChannel("orders", database=engine)
    await channel.connect(ChannelEnvironment(app_name="it", clock=SystemClock()))

    await channel.send([Envelope(b"1", {h.MESSAGE_ID: "a"})])
    received = await channel.receive(1, timeout=1.0)
    await channel.ack(received)

    assert [d.envelope.message_id for d in received] == ["a"]
    await channel.close()
    await engine.dispose()


async def test_an_in_memory_sqlite_database_works_for_a_single_process() -> None:
    database = Database("sqlite+aiosqlite://")
    await database.create_schema()
    channel = SqlChannel("orders", database=database)
    await channel.connect(ChannelEnvironment(app_name="it", clock=SystemClock()))

    async with database.transaction():
        await channel.send([Envelope(b"1", {h.MESSAGE_ID: "a"})])
    received = await channel.receive(1, timeout=1.0)
    await channel.ack(received)

    assert [d.envelope.message_id for d in received] == ["a"]
    assert await channel.depth() == 0
    await channel.close()
    await database.close()


async def test_a_second_write_transaction_inside_one_on_sqlite_fails_instead_of_hanging(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'lock.db'}")
    await database.create_schema()

    async with database.transaction():
        with pytest.raises(TidingsError, match="one writer"):
            async with database.writing():
                pass
    await database.close()


@pytest.mark.postgres
async def test_a_consumer_of_another_process_wakes_on_notify_without_polling() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    # Two Database objects share no in-process signal: only LISTEN/NOTIFY can wake the consumer.
    async with sender_and_consumer(POSTGRES_URL) as (sender, consumer, consumer_db):
        assert wakeups_for(consumer_db).listening
        latencies = []
        for n in range(5):
            waiting = asyncio.ensure_future(consumer.receive(1, timeout=10.0))
            await asyncio.sleep(0.6)  # long enough for the consumer's poll pause to grow
            sent = time.monotonic()
            await sender.send([Envelope(b"x", {h.MESSAGE_ID: f"m-{n}"})])
            received = await waiting
            latencies.append(time.monotonic() - sent)
            await consumer.ack(received)
        assert max(latencies) < 0.3, latencies


@pytest.mark.mariadb
async def test_mariadb_engines_created_from_a_url_read_committed() -> None:
    require_service("MariaDB", "127.0.0.1", 3306)
    database = Database(MARIADB_URL)
    await database.create_schema()
    await database.connect()
    async with database.reading() as connection:
        level = (await connection.exec_driver_sql("SELECT @@tx_isolation")).scalar()
    assert level == "READ-COMMITTED"
    assert database.is_mariadb
    await database.close()


@pytest.mark.postgres
async def test_tidings_own_connections_carry_the_connect_args_the_engine_uses() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    settings = {"server_settings": {"application_name": "tidings-connect-args"}}
    database = Database(POSTGRES_URL, engine_options={"connect_args": settings})
    await database.create_schema()
    await database.connect()
    ask = "SELECT current_setting('application_name')"

    own = await database.fetch(ask)
    async with database.transaction() as connection:
        engines = (await connection.exec_driver_sql(ask)).scalar()

    assert own[0][0] == engines == "tidings-connect-args"
    await database.close()


@pytest.mark.postgres
async def test_a_postgresql_database_given_as_an_engine_opens_tidings_connections_through_it() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    engine = create_async_engine(
        POSTGRES_URL, connect_args={"server_settings": {"application_name": "tidings-engine"}}
    )
    await Database(engine).create_schema()
    channel = SqlChannel(f"it-{uuid.uuid4().hex[:12]}", database=engine)
    await channel.connect(ChannelEnvironment(app_name="it", clock=SystemClock()))

    await channel.send([Envelope(b"1", {h.MESSAGE_ID: "a"})])
    received = await channel.receive(1, timeout=1.0)
    await channel.ack(received)
    rows = await channel.database.fetch("SELECT current_setting('application_name')")

    assert [d.envelope.message_id for d in received] == ["a"]
    assert rows[0][0] == "tidings-engine"
    await channel.close()
    await engine.dispose()


@pytest.mark.postgres
async def test_a_deduplication_lookup_uses_the_primary_key_even_after_the_table_was_analyzed_empty() -> None:
    async with empty_postgres_database() as url:
        database = Database(url)
        await database.create_schema()
        await database.connect()
        await database.execute("ANALYZE tidings_deduplication")
        await SqlDeduplicationStore(database).add("ship", "m-1", 1.0)
        lookup = "EXPLAIN SELECT 1 FROM tidings_deduplication WHERE tracking = 'ship' AND message_key = 'm-1'"

        plain = await asyncpg.connect(url.replace("+asyncpg", ""))
        plain_plan = "\n".join(row[0] for row in await plain.fetch(lookup))
        await plain.close()
        own_plan = "\n".join(row[0] for row in await database.fetch(lookup))
        await database.close()

    # A plan cached now would go on scanning the whole table as it grows.
    assert "Seq Scan" in plain_plan
    assert "tidings_deduplication_pkey" in own_plan
