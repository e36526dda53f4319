"""Retries, dead letters, deduplication and schedules with everything stored in a real database.

Each test runs on SQLite, PostgreSQL and MariaDB: the channel is an SqlChannel, the dead letters and
deduplication records are tables, and a manual clock drives delays.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tidings import (
    App,
    Backoff,
    DeadLetterFilter,
    MessageContext,
    RetryPolicy,
    asynchronous,
    event_handler,
)
from tidings import headers as h
from tidings.channels.sql import SqlChannel
from tidings.sql import Database, SqlDeduplicationStore
from tidings.testing import FlowTest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OrderPlaced:
    order_id: str


TABLES = ["CREATE TABLE IF NOT EXISTS shipments (id VARCHAR(100) PRIMARY KEY)"]


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def no_jitter(initial: float) -> Backoff:
    return Backoff.exponential(initial=initial, multiplier=2, jitter=0)


async def test_retries_follow_the_backoff_and_the_dead_letter_keeps_everything(database_url: str) -> None:
    work = fresh("work")
    tries: list[float] = []

    @asynchronous(work)
    @event_handler(endpoint_id=fresh("charge"))
    async def charge(event: OrderPlaced, context: MessageContext) -> None:
        tries.append(context.app.clock.now())
        raise RuntimeError(f"declined {event.order_id}")

    app = App(
        "shop",
        handlers=[charge],
        channels=[SqlChannel(work)],
        database=database_url,
        retry_policy=RetryPolicy(max_attempts=3, backoff=no_jitter(10)),
    )
    async with FlowTest(app, keep_channels=[work], raise_errors=False) as flow:
        start = flow.clock.now()
        await flow.publish(OrderPlaced("o-1"), headers={"tenant": "acme"})
        for _ in range(8):
            await flow.run()
            flow.advance(5)
        where = DeadLetterFilter(endpoint=charge.__tidings_handler__.endpoint_id)  # type: ignore[attr-defined]
        [letter] = await flow.app.dead_letters.list(where)
        assert await flow.app.dead_letters.count(DeadLetterFilter(header=("tenant", "acme"))) >= 1
        await flow.app.dead_letters.delete([letter.id])

    assert [round(at - start) for at in tries] == [0, 10, 30]
    assert (letter.attempts, letter.channel, letter.reason) == (3, work, "failed")
    assert letter.exception_message == "declined o-1"
    assert "RuntimeError" in letter.traceback
    assert letter.headers["tenant"] == "acme"
    assert letter.payload == '{"order_id":"o-1"}'
    assert round(letter.last_failed_at - letter.first_failed_at) == 30


async def test_only_the_failing_subscribers_copy_is_retried_and_a_replay_runs_it_once(
    database_url: str,
) -> None:
    work = fresh("work")
    broken = True
    runs: dict[str, int] = {"ship": 0, "notify": 0}
    ship_id, notify_id = fresh("ship"), fresh("notify")

    @asynchronous(work)
    @event_handler(endpoint_id=ship_id)
    async def ship(event: OrderPlaced) -> None:
        runs["ship"] += 1
        if broken:
            raise RuntimeError("warehouse offline")

    @asynchronous(work)
    @event_handler(endpoint_id=notify_id)
    async def notify(event: OrderPlaced) -> None:
        runs["notify"] += 1

    app = App(
        "shop",
        handlers=[ship, notify],
        channels=[SqlChannel(work)],
        database=database_url,
        retry_policy=RetryPolicy(max_attempts=2, backoff=no_jitter(1)),
    )
    async with FlowTest(app, keep_channels=[work], raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"))
        for _ in range(3):
            await flow.run()
            flow.advance(2)
        assert runs == {"ship": 2, "notify": 1}
        [letter] = await flow.app.dead_letters.list(DeadLetterFilter(endpoint=ship_id))

        broken = False
        await flow.app.dead_letters.replay(letter.id)
        await flow.run()
        await flow.run()

        assert runs == {"ship": 3, "notify": 1}
        assert await flow.app.dead_letters.get(letter.id) is None


async def test_a_redelivered_message_and_a_duplicate_with_the_same_id_are_skipped(database_url: str) -> None:
    work = fresh("work")
    handled: list[str] = []

    @asynchronous(work)
    @event_handler(endpoint_id=fresh("ship"))
    async def ship(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    app = App("shop", handlers=[ship], channels=[SqlChannel(work)], database=database_url)
    async with FlowTest(app, keep_channels=[work]) as flow:
        same_id = str(uuid.uuid4())
        await flow.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: same_id})
        await flow.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: same_id})
        first = await flow.run()
        channel = flow.app.channel(work)
        await channel.send([_copy_for(ship, same_id)])  # redelivered after a lost ack
        second = await flow.run()

    assert handled == ["o-1"]
    assert first.duplicates + second.duplicates == 2


def _copy_for(handler: object, message_id: str) -> object:
    from tidings._message import Envelope

    endpoint_id = handler.__tidings_handler__.endpoint_id  # type: ignore[attr-defined]
    return Envelope(b'{"order_id":"o-1"}', {h.ENDPOINT: endpoint_id, h.MESSAGE_ID: message_id})


async def test_a_dedup_record_rolled_back_with_a_failed_transaction_does_not_block_the_retry(
    database_url: str,
) -> None:
    work = fresh("work")
    order_id = fresh("o")
    attempts: list[int] = []

    @asynchronous(work)
    @event_handler(endpoint_id=fresh("ship"))
    async def ship(event: OrderPlaced, session: AsyncSession, context: MessageContext) -> None:
        attempts.append(context.attempt)
        await session.execute(text("INSERT INTO shipments (id) VALUES (:id)"), {"id": event.order_id})
        if context.attempt == 1:
            raise RuntimeError("fails after writing: the row and the dedup record roll back")

    app = App(
        "shop",
        handlers=[ship],
        channels=[SqlChannel(work)],
        database=database_url,
        retry_policy=RetryPolicy(max_attempts=3, backoff=no_jitter(1)),
    )
    async with FlowTest(app, keep_channels=[work], raise_errors=False) as flow:
        await flow.publish(OrderPlaced(order_id))
        await flow.run()
        flow.advance(2)
        await flow.run()
        async with flow.app.transaction() as session:
            rows = (
                await session.execute(text("SELECT id FROM shipments WHERE id = :id"), {"id": order_id})
            ).all()

    assert attempts == [1, 2]
    assert len(rows) == 1


async def test_expired_deduplication_records_are_purged(database_url: str) -> None:
    database = Database(database_url)
    await database.connect()
    try:
        store = SqlDeduplicationStore(database)
        tracking = fresh("tracking")
        await store.add(tracking, "old", 1_000.0)
        await store.add(tracking, "new", 9_000.0)

        purged = await store.purge(older_than=5_000.0)

        assert purged >= 1
        assert not await store.contains(tracking, "old")
        assert await store.contains(tracking, "new")
    finally:
        await database.close()


async def test_two_worker_processes_running_one_schedule_fire_each_tick_once(
    database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "ticks.log"
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TIDINGS_TEST_DATABASE": database_url,
        "TIDINGS_TEST_LOG": str(log),
        "TIDINGS_TEST_SCHEDULE": fresh("every-second"),
    }
    command = [sys.executable, "-m", "tidings.cli", "run", "tests.integration.schedule_app:app"]
    workers = [subprocess.Popen(command, env=environment, cwd=ROOT) for _ in range(2)]
    try:
        # Both workers run by the time four ticks fired (a slow start under load only delays it).
        for _ in range(600):
            if log.exists() and len(log.read_text().splitlines()) >= 4:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)

    lines = log.read_text().splitlines()
    ticks = [line.split()[0] for line in lines]
    workers_seen = {line.split()[1] for line in lines}
    assert len(ticks) >= 3
    assert len(ticks) == len(set(ticks)), f"a tick fired twice: {lines}"
    assert all(worker.returncode == 0 for worker in workers)
    assert workers_seen  # which worker won each tick is up to the lock
