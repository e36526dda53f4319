"""SQLite set-up: WAL, a busy timeout, and transactions that take the write lock when they begin.

SQLite has one writer at a time. A transaction that starts as a reader and later writes can fail with
"database is locked" whatever the busy timeout, so every tidings write transaction begins with
`BEGIN IMMEDIATE`; pure reads (marked with the `READ_ONLY` execution option) begin deferred and run
beside the writer thanks to WAL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["BUSY_TIMEOUT_SECONDS", "READ_ONLY", "configure"]

#: Execution option marking a connection that only reads.
READ_ONLY = "tidings_read_only"

#: How long a connection waits for another process's write lock before failing.
BUSY_TIMEOUT_SECONDS = 30.0


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # tidings issues BEGIN itself (below); the driver must not open transactions on its own.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
    finally:
        cursor.close()


def _on_begin(connection: Connection) -> None:
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def configure(engine: AsyncEngine) -> None:
    """Install the connect and begin hooks on an SQLite engine (once)."""
    sync_engine = engine.sync_engine
    if not event.contains(sync_engine, "connect", _on_connect):
        event.listen(sync_engine, "connect", _on_connect)
    if not event.contains(sync_engine, "begin", _on_begin):
        event.listen(sync_engine, "begin", _on_begin)
