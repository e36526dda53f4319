"""The tables tidings keeps in the app's database, in one `MetaData` so that later features add theirs here.

Imported only to create, upgrade or print the schema, and by `Database.connect` on MySQL/MariaDB and
SQLite: tidings' own statements are plain SQL text on these tables. Every table is prefixed `tidings_`.
`tidings_schema_version` records each schema version applied, so that a newer tidings can upgrade an
older schema step by step (see `UPGRADES`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from tidings.sql._database import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "UPGRADES",
    "create_or_upgrade",
    "dead_letters",
    "deduplication",
    "installed_version",
    "messages",
    "metadata",
    "schedule_ticks",
    "schema_sql",
    "schema_version",
]

metadata = MetaData()

# MySQL's plain BLOB and TEXT stop at 64 KiB; messages may be larger.
_Body = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
_Json = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# SQLite only makes INTEGER PRIMARY KEY an alias of its fast rowid.
_Id = BigInteger().with_variant(Integer(), "sqlite")

#: Messages waiting in SQL channels. Times are the app clock's epoch seconds, never the server's clock.
messages = Table(
    "tidings_messages",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("channel", String(255), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("priority", Integer, nullable=False),
    # Not received before this time: the deliver-at time, or when a nack said to try again.
    Column("visible_at", Double, nullable=False),
    Column("expires_at", Double, nullable=True),
    Column("headers", _Json, nullable=False),
    Column("body", _Body, nullable=False),
    # While leased: when the lease runs out. Kept out of every index, so that claiming a row and
    # extending its lease rewrite it in place (a HOT update on PostgreSQL) without touching an index.
    Column("leased_until", Double, nullable=True),
    # A random number per claimed batch; ack, nack and extend only touch rows still under that lease.
    Column("lease_token", BigInteger, nullable=True),
    Column("delivery_count", Integer, nullable=False),
    Column("created_at", Double, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    # Half of each page stays free for the claimed version of its rows (HOT needs the same page).
    postgresql_with={"fillfactor": 50},
)

# The claim walks this index in delivery order, skips the few rows leased right now, and stops after
# one batch.
Index(
    "ix_tidings_messages_claim",
    messages.c.channel,
    messages.c.priority.desc(),
    messages.c.visible_at,
    messages.c.id,
)
# Answers "when is the next message of this channel due" with a range scan, for consumers that wait.
Index("ix_tidings_messages_due", messages.c.channel, messages.c.visible_at)

#: Messages that could not be handled, with why.
dead_letters = Table(
    "tidings_dead_letters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("message_id", String(255), nullable=False),
    Column("endpoint", String(255), nullable=False),
    Column("channel", String(255), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("exception_type", String(255), nullable=False),
    Column("exception_message", _Json, nullable=False),
    Column("traceback", _Json, nullable=False),
    Column("headers", _Json, nullable=False),
    Column("body", _Body, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_failed_at", Double, nullable=False),
    Column("last_failed_at", Double, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
Index("ix_tidings_dead_letters_failed", dead_letters.c.last_failed_at)
Index("ix_tidings_dead_letters_endpoint", dead_letters.c.endpoint, dead_letters.c.last_failed_at)

#: What each endpoint (or tracking name) handled, kept for the retention window.
deduplication = Table(
    "tidings_deduplication",
    metadata,
    Column("tracking", String(191), primary_key=True),
    Column("message_key", String(191), primary_key=True),
    Column("handled_at", Double, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)
Index("ix_tidings_deduplication_handled", deduplication.c.handled_at)

#: Schedule ticks claimed by a worker; the primary key lets exactly one worker claim each.
schedule_ticks = Table(
    "tidings_schedule_ticks",
    metadata,
    Column("schedule", String(191), primary_key=True),
    Column("tick_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("claimed_at", Double, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

#: One row per schema version applied.
schema_version = Table(
    "tidings_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", Double, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

#: Steps that bring a schema from version N - 1 to version N, keyed by N (none yet: version 1 is first).
UPGRADES: dict[int, Callable[[Connection], None]] = {}


def installed_version(connection: Connection) -> int | None:
    """The schema version in the database, or None when tidings' tables were never created."""
    if not inspect(connection).has_table(schema_version.name):
        return None
    version = connection.execute(select(func.max(schema_version.c.version))).scalar()
    return None if version is None else int(version)


def create_or_upgrade(connection: Connection) -> int:
    """Create missing tables and apply pending upgrades; returns the version the database is now at."""
    found = installed_version(connection)
    metadata.create_all(connection, checkfirst=True)
    if found is None:
        _record(connection, SCHEMA_VERSION)
        return SCHEMA_VERSION
    for version in range(found + 1, SCHEMA_VERSION + 1):
        UPGRADES[version](connection)
        _record(connection, version)
    return max(found, SCHEMA_VERSION)


def _record(connection: Connection, version: int) -> None:
    connection.execute(insert(schema_version).values(version=version, applied_at=time.time()))


_DIALECTS: dict[str, Callable[[], Dialect]] = {
    "postgresql": postgresql.dialect,
    "mysql": mysql.dialect,
    "mariadb": lambda: mysql.dialect(is_mariadb=True),
    "sqlite": sqlite.dialect,
}


def schema_sql(dialect_name: str) -> str:
    """The DDL that creates tidings' tables, as SQL text a DBA can review and run."""
    try:
        dialect = _DIALECTS[dialect_name]()
    except KeyError:
        raise ValueError(
            f"no SQL for dialect {dialect_name!r}; choose one of {', '.join(_DIALECTS)}"
        ) from None
    statements = [f"-- tidings schema version {SCHEMA_VERSION} for {dialect_name}"]
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        statements.extend(
            str(CreateIndex(index).compile(dialect=dialect)).strip() + ";"
            for index in sorted(table.indexes, key=lambda index: str(index.name))
        )
    statements.append(
        f"INSERT INTO {schema_version.name} (version, applied_at) "
        f"VALUES ({SCHEMA_VERSION}, {time.time():.3f});"
    )
    return "\n\n".join(statements) + "\n"
