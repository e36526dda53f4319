from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tidings import (
    App,
    CommandBus,
    ConfigurationError,
    Headers,
    InMemoryChannel,
    ManualClock,
    asynchronous,
    command_handler,
    event_handler,
    scheduled,
)
from tidings._schedules import InMemoryScheduleLock

# 2026-01-01 00:00:30 UTC: half a minute past a round minute.
START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC).timestamp()


@dataclass
class SendReport:
    at: float


@dataclass
class Heartbeat:
    pass


async def advance_in_steps(clock: ManualClock, seconds: float, step: float = 5) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)
        await asyncio.sleep(0.01)  # lets due schedules (and their worker threads) run


async def run_for(app: App, clock: ManualClock, seconds: float) -> None:
    consumer = app.consumer()
    running = asyncio.ensure_future(consumer.run())
    await asyncio.sleep(0.01)
    await advance_in_steps(clock, seconds)
    consumer.stop("test")
    await running


async def test_an_interval_schedule_fires_on_every_aligned_tick() -> None:
    fired: list[float] = []
    clock = ManualClock(START)

    @scheduled(every=timedelta(minutes=1))
    async def tick() -> None:
        fired.append(clock.now())

    app = App("shop", handlers=[tick], clock=clock)
    async with app:
        await run_for(app, clock, 180)

    assert [at - START for at in fired] == [30, 90, 150]


async def test_a_cron_schedule_returns_a_command_that_is_sent_to_its_handler() -> None:
    reports: list[float] = []
    clock = ManualClock(START)

    @scheduled(cron="*/2 * * * *")
    async def nightly() -> SendReport:
        return SendReport(clock.now())

    @asynchronous("reports")
    @command_handler
    async def send_report(command: SendReport) -> None:
        reports.append(command.at)

    app = App("shop", handlers=[nightly, send_report], channels=[InMemoryChannel("reports")], clock=clock)
    async with app:
        await run_for(app, clock, 300)
        await app.run("reports", stop_when_empty=True, schedules=False)

    assert [at - START for at in reports] == [90, 210]


async def test_a_returned_message_without_a_command_handler_is_published_as_an_event() -> None:
    beats: list[Heartbeat] = []
    clock = ManualClock(START)

    @scheduled(every=timedelta(seconds=30), name="heartbeat")
    def beat(commands: CommandBus) -> Heartbeat:  # a plain def runs in the thread pool
        return Heartbeat()

    @event_handler
    async def on_beat(event: Heartbeat) -> None:
        beats.append(event)

    app = App("shop", handlers=[beat, on_beat], clock=clock)
    async with app:
        await run_for(app, clock, 60)

    assert len(beats) == 2


async def test_two_workers_sharing_a_lock_fire_each_tick_once() -> None:
    fired: list[float] = []
    clock = ManualClock(START)
    lock = InMemoryScheduleLock()

    @scheduled(every=timedelta(seconds=20))
    async def tick() -> None:
        fired.append(clock.now())

    first = App("shop", handlers=[tick], clock=clock)
    second = App("shop", handlers=[tick], clock=clock)
    first.schedule_lock = second.schedule_lock = lock
    async with first, second:
        workers = [first.consumer(), second.consumer()]
        running = [asyncio.ensure_future(worker.run()) for worker in workers]
        await asyncio.sleep(0.01)
        await advance_in_steps(clock, 100)
        for worker in workers:
            worker.stop("test")
        await asyncio.gather(*running)

    assert [at - START for at in fired] == [10, 30, 50, 70, 90]


async def test_missed_ticks_are_skipped_by_default_and_fired_on_start_when_catching_up() -> None:
    fired: dict[str, list[float]] = {"skip": [], "catch": []}
    clock = ManualClock(START)
    lock = InMemoryScheduleLock()
    await lock.claim("skip", START - 30)  # both last fired a minute ago ...
    await lock.claim("catch", START - 30)
    clock.advance(0)

    @scheduled(every=timedelta(seconds=20), name="skip")
    async def skip() -> None:
        fired["skip"].append(clock.now())

    @scheduled(every=timedelta(seconds=20), name="catch", catch_up=True)
    async def catch() -> None:
        fired["catch"].append(clock.now())

    clock.advance(60)  # ... and the workers were down for a minute
    app = App("shop", handlers=[skip, catch], clock=clock)
    app.schedule_lock = lock
    async with app:
        await run_for(app, clock, 10)

    assert [at - START for at in fired["skip"]] == [70]
    assert [at - START for at in fired["catch"]] == [60, 60, 60, 60, 70]  # 4 missed at start, then on time


def test_a_schedule_asking_for_message_headers_fails_start_up() -> None:
    @scheduled(every=timedelta(minutes=1))
    async def wrong(headers: Headers) -> None: ...

    with pytest.raises(ConfigurationError, match="only exists while handling a message"):
        App("shop", handlers=[wrong])


def test_a_schedule_needs_exactly_one_trigger_and_a_valid_cron() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        scheduled()
    with pytest.raises(ValueError, match="not a valid cron"):
        scheduled(cron="every tuesday")
