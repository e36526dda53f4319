"""The app's promises, proven the same way on every channel kind.

Each test builds a real app on a fresh channel of the kind under test and runs real consumers; the
crash and shutdown tests run workers in subprocesses and kill them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tidings import (
    App,
    Backoff,
    ConfigurationError,
    DeadLetterFilter,
    Headers,
    MessageContext,
    RetryPolicy,
    asynchronous,
    event_handler,
    priority,
)
from tidings import headers as h
from tidings._consumer import ConsumerStats
from tidings._message import Envelope
from tidings.channels.base import Channel

from .kinds import ChannelFactory
from .worker_app import Numbered

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OrderPlaced:
    order_id: str
    total: int


def app_on(factory: ChannelFactory, channels: list[Channel], handlers: list[Any], **options: Any) -> App:
    return App(
        "conformance", handlers=handlers, channels=channels, database=factory.database,
        **{**factory.app_options, **options},
    )  # fmt: skip


class RecordingApp(NamedTuple):
    app: App
    work: Channel
    #: The order id of every OrderPlaced the handler got, in the order it got them.
    handled: list[str]


def app_recording_order_ids(
    factory: ChannelFactory,
    work: Channel | None = None,
    *,
    then: Callable[[OrderPlaced], Awaitable[None]] | None = None,
    **options: Any,
) -> RecordingApp:
    """An app on `work` (a fresh channel if none) whose one handler, `handle`, records each event's
    order id, then awaits `then(event)` if given."""
    work = work or factory.new()
    handled: list[str] = []

    @asynchronous(work.name)
    @event_handler
    async def handle(event: OrderPlaced) -> None:
        handled.append(event.order_id)
        if then is not None:
            await then(event)

    return RecordingApp(app_on(factory, [work], [handle], **options), work, handled)


async def run_until(
    app: App, done: Callable[[ConsumerStats], bool], *, timeout: float = 15.0, **options: Any
) -> ConsumerStats:
    """Run a consumer until `done(its stats)` holds (checked every 20 ms) or `timeout` passes."""
    consumer = app.consumer(**options)
    running = asyncio.ensure_future(consumer.run())
    deadline = time.monotonic() + timeout
    while not done(consumer.stats) and time.monotonic() < deadline and not running.done():
        await asyncio.sleep(0.02)
    consumer.stop("test done")
    return await running


async def test_a_message_goes_round_trip_with_its_headers(channel_factory: ChannelFactory) -> None:
    work = channel_factory.new()
    got: list[tuple[OrderPlaced, dict[str, str]]] = []

    @asynchronous(work.name)
    @event_handler
    async def on_placed(event: OrderPlaced, headers: Headers) -> None:
        got.append((event, dict(headers)))

    app = app_on(channel_factory, [work], [on_placed])
    async with app:
        await app.events.publish(OrderPlaced("o-1", 5), headers={"tenant": "acme"})
        await run_until(app, lambda _: bool(got))

    event, headers = got[0]
    assert event == OrderPlaced("o-1", 5)
    assert headers["tenant"] == "acme"
    assert headers[h.ENDPOINT] == "on_placed"
    assert headers[h.MESSAGE_NAME] == "OrderPlaced"
    assert headers[h.CORRELATION_ID] == headers[h.MESSAGE_ID]


async def test_each_subscriber_gets_one_copy_and_a_failing_one_never_reruns_its_siblings(
    channel_factory: ChannelFactory,
) -> None:
    first, second = channel_factory.new(), channel_factory.new()
    runs = {"a": 0, "b": 0, "c": 0}

    @asynchronous(first.name)
    @event_handler
    async def a(event: OrderPlaced) -> None:
        runs["a"] += 1

    @asynchronous(first.name)
    @event_handler
    async def b(event: OrderPlaced) -> None:
        runs["b"] += 1
        if runs["b"] == 1:
            raise RuntimeError("first try fails")

    @asynchronous(second.name)
    @event_handler
    async def c(event: OrderPlaced) -> None:
        runs["c"] += 1

    app = app_on(channel_factory, [first, second], [a, b, c])
    async with app:
        await app.events.publish(OrderPlaced("o-1", 1))
        await run_until(app, lambda _: runs["b"] >= 2, timeout=20)
        await asyncio.sleep(0.3)

    assert runs == {"a": 1, "b": 2, "c": 1}


async def test_a_failed_message_is_never_lost_its_retry_waits_in_the_channel(
    channel_factory: ChannelFactory,
) -> None:
    work = channel_factory.new()
    attempts: list[int] = []

    @asynchronous(work.name)
    @event_handler
    async def fails(event: OrderPlaced, context: MessageContext) -> None:
        attempts.append(context.attempt)
        raise RuntimeError("not yet")

    app = app_on(channel_factory, [work], [fails], retry_policy=RetryPolicy(backoff=Backoff.fixed(60)))
    async with app:
        await app.events.publish(OrderPlaced("o-1", 1))
        stats = await run_until(app, lambda _: bool(attempts))

        assert attempts == [1]
        assert (stats.handled, stats.retried) == (0, 1)
        assert await work.depth() == 1  # the retry copy, due in a minute


async def test_a_delayed_retry_does_not_hold_up_the_messages_behind_it(
    channel_factory: ChannelFactory,
) -> None:
    work = channel_factory.new()
    seen: list[tuple[str, int]] = []

    @asynchronous(work.name)
    @event_handler
    async def handle(event: OrderPlaced, context: MessageContext) -> None:
        seen.append((event.order_id, context.attempt))
        if event.order_id == "flaky" and context.attempt == 1:
            raise RuntimeError("first try fails")

    policy = RetryPolicy(backoff=Backoff.fixed(1.0))
    app = app_on(channel_factory, [work], [handle], retry_policy=policy)
    async with app:
        await app.events.publish(OrderPlaced("flaky", 1))
        for number in range(3):
            await app.events.publish(OrderPlaced(f"next-{number}", 1))
        await run_until(app, lambda _: ("flaky", 2) in seen, timeout=20, concurrency=1, batch_size=1)

    assert seen[0] == ("flaky", 1)
    assert seen[-1] == ("flaky", 2)
    assert sorted(seen[1:-1]) == [("next-0", 1), ("next-1", 1), ("next-2", 1)]


async def test_an_exhausted_message_is_dead_lettered_and_a_replay_handles_it_once(
    channel_factory: ChannelFactory,
) -> None:
    work = channel_factory.new()
    broken = True
    handled: list[tuple[str, str | None]] = []

    @asynchronous(work.name)
    @event_handler
    async def ship(event: OrderPlaced, headers: Headers) -> None:
        if broken:
            raise RuntimeError("warehouse offline")
        handled.append((event.order_id, headers.get(h.REPLAYED)))

    policy = RetryPolicy(max_attempts=2, backoff=Backoff.fixed(0.2))
    app = app_on(channel_factory, [work], [ship], retry_policy=policy)
    async with app:
        await app.events.publish(OrderPlaced("o-1", 1), headers={"tenant": "acme"})
        stats = await run_until(app, lambda stats: stats.dead_lettered >= 1, timeout=10)
        mine = DeadLetterFilter(channel=work.name)  # the database may hold other tests' dead letters
        letters = await app.dead_letters.list(mine)
        assert stats.dead_lettered == 1
        assert [(letter.endpoint, letter.attempts, letter.channel) for letter in letters] == [
            ("ship", 2, work.name)
        ]

        broken = False
        await app.dead_letters.replay(letters[0].id)
        await run_until(app, lambda _: bool(handled))

        assert handled == [("o-1", letters[0].id)]
        assert await app.dead_letters.count(mine) == 0


async def test_a_message_delivered_twice_is_handled_once(channel_factory: ChannelFactory) -> None:
    app, _, handled = app_recording_order_ids(channel_factory)
    async with app:
        same_id = str(uuid.uuid4())  # records outlive the test in a real database
        await app.events.publish(OrderPlaced("o-1", 1), headers={h.MESSAGE_ID: same_id})
        await app.events.publish(OrderPlaced("o-1", 1), headers={h.MESSAGE_ID: same_id})
        stats = await run_until(app, lambda stats: stats.handled + stats.duplicates >= 2, timeout=10)

    assert handled == ["o-1"]
    assert stats.duplicates == 1


async def test_a_long_handler_keeps_its_message_by_extending_the_lease(
    channel_factory: ChannelFactory,
) -> None:
    app, _, runs = app_recording_order_ids(
        channel_factory,
        channel_factory.new(lease_seconds=1.0),
        then=lambda _: asyncio.sleep(3.0),  # three leases long
        deduplicate=False,
    )
    async with app:
        await app.events.publish(OrderPlaced("o-1", 1))
        # Done once handled, then half a lease more: a redelivery would have shown by then.
        stats = await run_until(app, lambda stats: stats.handled >= 1, timeout=10, concurrency=2)
        await asyncio.sleep(0.5)

    assert runs == ["o-1"]
    assert stats.handled == 1


async def test_a_delayed_message_is_handled_when_due_and_not_before(
    channel_factory: ChannelFactory,
) -> None:
    work = channel_factory.new()
    handled_at: list[float] = []

    @asynchronous(work.name)
    @event_handler
    async def later(event: OrderPlaced) -> None:
        handled_at.append(time.time())

    app = app_on(channel_factory, [work], [later])
    async with app:
        sent_at = time.time()
        await app.events.publish(OrderPlaced("o-1", 1), delay=timedelta(seconds=1.5))
        await run_until(app, lambda _: bool(handled_at), timeout=10)

    assert handled_at
    assert 1.4 <= handled_at[0] - sent_at <= 1.5 + 0.5


async def test_higher_priority_messages_are_handled_first_where_the_channel_orders_by_priority(
    channel_factory: ChannelFactory,
) -> None:
    work = channel_factory.new()
    if not work.capabilities.priority:

        @asynchronous(work.name)
        @priority(5)
        @event_handler
        async def urgent(event: OrderPlaced) -> None: ...

        with pytest.raises(ConfigurationError, match="cannot order by priority"):
            app_on(channel_factory, [work], [urgent])
        return

    app, _, order = app_recording_order_ids(channel_factory, work)
    async with app:
        for number in range(3):
            await app.events.publish(OrderPlaced(f"low-{number}", 1))
        await app.events.publish(OrderPlaced("high", 1), priority=9)
        await asyncio.sleep(0.3)
        await run_until(app, lambda _: len(order) == 4, concurrency=1, batch_size=1)

    assert order[0] == "high"


async def test_an_expired_message_is_dropped_and_counted_not_handled(
    channel_factory: ChannelFactory,
) -> None:
    app, work, handled = app_recording_order_ids(channel_factory)
    async with app:
        await app.events.publish(OrderPlaced("stale", 1), time_to_live=timedelta(seconds=0.3))
        await app.events.publish(OrderPlaced("fresh", 1), time_to_live=timedelta(seconds=60))
        await asyncio.sleep(0.8)
        stats = await run_until(app, lambda _: bool(handled))
        await asyncio.sleep(0.2)

        assert handled == ["fresh"]
        assert stats.expired <= 1  # a broker may also expire it natively, before the consumer sees it
        assert await work.depth() == 0


async def test_a_payload_that_cannot_be_decoded_is_dead_lettered_and_the_consumer_goes_on(
    channel_factory: ChannelFactory,
) -> None:
    app, work, handled = app_recording_order_ids(channel_factory)
    async with app:
        garbage = Envelope(b"\x00\xffnot json", {h.ENDPOINT: "handle", h.MESSAGE_ID: "garbage"})
        await work.send([garbage])
        await app.events.publish(OrderPlaced("good", 1))
        stats = await run_until(app, lambda _: bool(handled))
        await asyncio.sleep(0.2)
        letters = await app.dead_letters.list(DeadLetterFilter(channel=work.name))

    assert handled == ["good"]
    assert stats.dead_lettered == 1
    assert [(letter.message_id, letter.exception_type) for letter in letters] == [
        ("garbage", "tidings.exceptions.SerializationError")
    ]


async def test_stopping_lets_in_flight_handlers_finish_and_leaves_the_rest(
    channel_factory: ChannelFactory,
) -> None:
    finished: list[str] = []

    async def finish(event: OrderPlaced) -> None:
        await asyncio.sleep(0.5)
        finished.append(event.order_id)

    app, work, started = app_recording_order_ids(channel_factory, then=finish)
    async with app:
        for number in range(6):
            await app.events.publish(OrderPlaced(str(number), 1))
        consumer = app.consumer(concurrency=2, batch_size=2)
        running = asyncio.ensure_future(consumer.run())
        deadline = time.monotonic() + 10
        while len(started) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

        consumer.stop("test")
        stats = await running

        assert finished == started
        assert stats.handled == len(finished)
        assert await work.depth() == 6 - len(finished)  # received ahead or not: all still there


# -- worker processes ---------------------------------------------------------------------------------


def _worker_environment(factory: ChannelFactory, channel: Channel, log: Path) -> dict[str, str]:
    assert factory.recipe is not None
    return {
        **os.environ,
        "TIDINGS_TEST_RECIPE": json.dumps(factory.recipe),
        "TIDINGS_TEST_CHANNEL": channel.name,
        "TIDINGS_TEST_LEASE": str(channel.lease_seconds),
        "TIDINGS_TEST_DATABASE": factory.database or "",
        "TIDINGS_TEST_LOG": str(log),
        "PYTHONPATH": str(ROOT),
    }


def _lines(log: Path, prefix: str) -> list[int]:
    if not log.exists():
        return []
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith(prefix)]


async def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_messages_of_a_worker_killed_mid_batch_are_all_handled_after_a_restart(
    durable_channel_factory: ChannelFactory, tmp_path: Path
) -> None:
    channel_factory = durable_channel_factory
    work = channel_factory.new(lease_seconds=2.0)
    log = tmp_path / "handled.log"
    app = app_on(channel_factory, [work], [])
    environment = _worker_environment(channel_factory, work, log)
    total = 30

    async with app:
        from tests.conformance.worker_app import build_app

        sender = build_app(channel_factory.recipe, work.name, 2.0, channel_factory.database)  # type: ignore[arg-type]
        async with sender:
            for number in range(total):
                await sender.events.publish(Numbered(number, 0.05))

        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.conformance.worker_app"], env=environment, cwd=ROOT
        )
        try:
            await _wait_for(lambda: len(_lines(log, "done")) >= 5, 30, "the first worker to start")
            worker.send_signal(signal.SIGKILL)  # mid-batch: some handlers are half way
            worker.wait(10)
        finally:
            with suppress(ProcessLookupError):
                worker.kill()
        handled_before = set(_lines(log, "done"))
        assert len(handled_before) < total

        restarted = subprocess.Popen(
            [sys.executable, "-m", "tests.conformance.worker_app"], env=environment, cwd=ROOT
        )
        try:
            await _wait_for(lambda: set(_lines(log, "done")) == set(range(total)), 60, "every message")
        finally:
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(30)

    assert set(_lines(log, "done")) == set(range(total))


async def test_a_tidings_run_worker_getting_sigterm_finishes_its_handler_and_exits_zero(
    durable_channel_factory: ChannelFactory, tmp_path: Path
) -> None:
    channel_factory = durable_channel_factory
    work = channel_factory.new(lease_seconds=30.0)
    log = tmp_path / "handled.log"
    environment = _worker_environment(channel_factory, work, log)
    total = 5

    from tests.conformance.worker_app import build_app

    sender = build_app(channel_factory.recipe, work.name, 30.0, channel_factory.database)  # type: ignore[arg-type]
    async with sender:
        for number in range(total):
            await sender.events.publish(Numbered(number, 1.0))

        worker = subprocess.Popen(
            [
                sys.executable, "-m", "tidings.cli", "run", "tests.conformance.worker_app:app",
                work.name, "--concurrency", "1", "--batch-size", "1", "--drain-timeout", "20",
            ],
            env=environment, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            await _wait_for(lambda: bool(_lines(log, "start")), 30, "the worker to start a handler")
            worker.send_signal(signal.SIGTERM)
            output, _ = await asyncio.to_thread(worker.communicate, timeout=30)
        finally:
            with suppress(ProcessLookupError):
                worker.kill()

        started, done = _lines(log, "start"), _lines(log, "done")
        assert worker.returncode == 0, output.decode()
        assert started == done  # the in-flight handler finished
        assert await sender.channel(work.name).depth() == total - len(done)
