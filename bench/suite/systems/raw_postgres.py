"""The raw asyncpg loop: the limit for a PostgreSQL queue table claimed with SKIP LOCKED.

A table per run (`id bigserial`, `body bytea`) with a statement trigger that NOTIFYs. Producer:
`executemany` of 100 INSERTs per call (each call one transaction). Worker (`python -m
bench.suite.systems.raw_postgres`), one process: `BEGIN; SELECT id, body ... ORDER BY id LIMIT 100
FOR UPDATE SKIP LOCKED`, handle the rows, `DELETE ... WHERE id = ANY($1); COMMIT`; when nothing is
left it waits for a notification (or 1 s) on a second connection.
"""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
from bench.suite import config, probe
from bench.suite.common import body, decode_job, pace_async, python_module

BATCH = 100
SETTINGS = (
    "1 process; `SELECT ... LIMIT 100 FOR UPDATE SKIP LOCKED` + `DELETE` in one transaction; "
    "LISTEN/NOTIFY wake-ups; producer `executemany` of 100 rows per call"
)


def worker_command() -> list[str]:
    return python_module(__name__)


def _table() -> str:
    return config.queue_name()


async def _create(connection: asyncpg.Connection) -> None:
    table = _table()
    await connection.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, body bytea NOT NULL);
        CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM pg_notify('{table}', ''); RETURN NULL; END $$;
        CREATE OR REPLACE TRIGGER {table}_inserted AFTER INSERT ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
        """
    )


async def enqueue(count: int) -> float:
    connection = await asyncpg.connect(config.POSTGRES_DSN)
    try:
        await _create(connection)
        insert = f"INSERT INTO {_table()} (body) VALUES ($1)"
        rows = [(body(n),) for n in range(count)]

        async def send_batches() -> None:
            for first in range(0, count, BATCH):
                await connection.executemany(insert, rows[first : first + BATCH])

        started = time.perf_counter()
        await send_batches()
        return time.perf_counter() - started
    finally:
        await connection.close()


async def pace(count: int, rate: float) -> None:
    connection = await asyncpg.connect(config.POSTGRES_DSN)
    insert = await connection.prepare(f"INSERT INTO {_table()} (body) VALUES ($1)")
    try:
        await pace_async(count, rate, lambda n, sent: insert.fetch(body(n, sent)))
    finally:
        await connection.close()


async def cleanup() -> None:
    connection = await asyncpg.connect(config.POSTGRES_DSN)
    try:
        await connection.execute(
            f"DROP TABLE IF EXISTS {_table()}; DROP FUNCTION IF EXISTS {_table()}_notify()"
        )
    finally:
        await connection.close()


async def _work() -> None:
    table = _table()
    connection = await asyncpg.connect(config.POSTGRES_DSN)
    listener = await asyncpg.connect(config.POSTGRES_DSN)
    woken = asyncio.Event()
    await listener.add_listener(table, lambda *_: woken.set())
    claim = await connection.prepare(
        f"SELECT id, body FROM {table} ORDER BY id LIMIT {BATCH} FOR UPDATE SKIP LOCKED"
    )
    delete = await connection.prepare(f"DELETE FROM {table} WHERE id = ANY($1::bigint[])")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        woken.clear()
        async with connection.transaction():
            rows = await claim.fetch()
            for row in rows:
                probe.handled(decode_job(row[1]).sent)  # the trivial handler
            if rows:
                await delete.fetch([row[0] for row in rows])
        if not rows:
            waiting = asyncio.ensure_future(woken.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([waiting, stopping], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            stopping.cancel()
    await listener.close()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(_work())
