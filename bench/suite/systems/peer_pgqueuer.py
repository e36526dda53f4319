"""pgqueuer on PostgreSQL (asyncpg), run with `pgq run`.

Its schema (durable tables, the default) goes into the bench database once. Worker: one process, its
defaults: batches of 10, no concurrency limit, the entrypoint's job deleted when done. Producer:
`await queries.enqueue(entrypoint, payload)`, 100 in flight over an asyncpg pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from bench.suite import config, probe
from bench.suite.common import body, decode_job, enqueue_in_flight, executable, pace_async
from pgqueuer import PgQueuer
from pgqueuer.models import Job
from pgqueuer.queries import Queries

_ENTRYPOINT = config.queue_name()

SETTINGS = "1 process; batch size 10, no concurrency limit (defaults); 100 `enqueue()` in flight"


@contextlib.asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    """The factory `pgq run` calls."""
    connection = await asyncpg.connect(config.POSTGRES_DSN)
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint(_ENTRYPOINT)
    async def job(job: Job) -> None:
        probe.handled(decode_job(job.payload or b"").sent)  # the trivial handler

    try:
        yield pgq
    finally:
        await connection.close()


def worker_command() -> list[str]:
    return [executable("pgq"), "run", f"{__name__}:create"]


async def _pool() -> tuple[asyncpg.Pool, Queries]:
    pool = await asyncpg.create_pool(config.POSTGRES_DSN, min_size=10, max_size=10)
    queries = Queries.from_asyncpg_pool(pool)
    async with pool.acquire() as connection:
        if not await connection.fetchval("SELECT to_regclass('pgqueuer') IS NOT NULL"):
            await queries.install()
    return pool, queries


async def enqueue(count: int) -> float:
    pool, queries = await _pool()
    try:
        return await enqueue_in_flight(count, lambda n: queries.enqueue(_ENTRYPOINT, body(n)))
    finally:
        await pool.close()


async def pace(count: int, rate: float) -> None:
    pool, queries = await _pool()
    try:
        await pace_async(count, rate, lambda n, sent: queries.enqueue(_ENTRYPOINT, body(n, sent)))
    finally:
        await pool.close()


async def cleanup() -> None:
    connection = await asyncpg.connect(config.POSTGRES_DSN)
    try:
        await connection.execute("DELETE FROM pgqueuer WHERE entrypoint = $1", _ENTRYPOINT)
        await connection.execute("DELETE FROM pgqueuer_log WHERE entrypoint = $1", _ENTRYPOINT)
    finally:
        await connection.close()
