"""procrastinate on PostgreSQL (psycopg 3), run with `procrastinate worker`.

Its schema goes into the bench database once. Worker: one process, `--concurrency 10` (the default is
1; 10 matches tidings' default), LISTEN/NOTIFY on (the default), finished jobs kept (the default).
Producer: `await job.defer_async(...)`, 100 in flight over the connector's pool.
"""

from __future__ import annotations

import procrastinate
from bench.suite import config, probe
from bench.suite.common import enqueue_in_flight, executable, pace_async

_QUEUE = config.queue_name()
CONCURRENCY = 10

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=config.POSTGRES_DSN))


@app.task(name="job", queue=_QUEUE)
async def job(n: int, sent: float) -> None:
    probe.handled(sent)  # the trivial handler


SETTINGS = (
    f"1 process, `--concurrency {CONCURRENCY}` (default 1); LISTEN/NOTIFY (default); "
    "finished jobs kept (default); `--log-level warning`; 100 `defer_async()` in flight"
)


def worker_command() -> list[str]:
    return [
        executable("procrastinate"),
        "--log-level",
        "warning",
        "--app",
        f"{__name__}.app",
        "worker",
        "--queues",
        _QUEUE,
        "--concurrency",
        str(CONCURRENCY),
    ]


async def _schema() -> None:
    async with app.open_async():
        rows = await app.connector.execute_query_one_async(
            "SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present"
        )
        if not rows["present"]:
            await app.schema_manager.apply_schema_async()


async def enqueue(count: int) -> float:
    await _schema()
    async with app.open_async():
        return await enqueue_in_flight(count, lambda n: job.defer_async(n=n, sent=0.0))


async def pace(count: int, rate: float) -> None:
    async with app.open_async():
        await pace_async(count, rate, lambda n, sent: job.defer_async(n=n, sent=sent))


async def cleanup() -> None:
    async with app.open_async():
        await app.connector.execute_query_async(
            f"DELETE FROM procrastinate_jobs WHERE queue_name = '{_QUEUE}'"
        )
