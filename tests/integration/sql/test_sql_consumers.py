"""Competing consumers: every message is handled, none twice while its lease holds."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from tests.conftest import require_service

from tidings import headers as h
from tidings._clock import ManualClock
from tidings._message import Envelope
from tidings.channels.base import Delivery
from tidings.channels.sql import SqlChannel
from tidings.sql import Database

from .conftest import POSTGRES_URL, OpenChannel, sender_and_consumer

pytestmark = pytest.mark.slow


def envelope(n: int, **headers: str) -> Envelope:
    return Envelope(str(n).encode(), {h.MESSAGE_ID: f"m-{n}", h.ENDPOINT: "ep", **headers})


class Tally:
    """What each consumer handled; `all_in` is set once `expected` messages were handled in total."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.handled: dict[str, list[int]] = {}
        self.all_in = asyncio.Event()

    def add(self, consumer: str, numbers: list[int]) -> None:
        self.handled.setdefault(consumer, []).extend(numbers)
        if sum(map(len, self.handled.values())) >= self.expected:
            self.all_in.set()


async def consume(channel: SqlChannel, consumer: str, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        deliveries = await channel.receive(100, timeout=0.2)
        tally.add(consumer, [int(d.envelope.body) for d in deliveries])
        await channel.ack(deliveries)


async def test_two_consumers_on_separate_connections_share_2000_messages_without_overlap(
    url: str, database: Database, open_channel: OpenChannel
) -> None:
    # On servers each consumer has its own Database (engine and pool), as two worker processes would.
    # SQLite is embedded: its consumers are tasks of one process sharing one writer.
    if url.startswith("sqlite"):
        first_db = second_db = database
    else:
        first_db, second_db = Database(url), Database(url)
    name = f"it-{uuid.uuid4().hex[:12]}"
    try:
        producer = await open_channel(name)
        first = await open_channel(name, db=first_db)
        second = await open_channel(name, db=second_db)
        tally = Tally(2000)
        stop = asyncio.Event()
        consumers = [
            asyncio.ensure_future(consume(first, "first", tally, stop)),
            asyncio.ensure_future(consume(second, "second", tally, stop)),
        ]
        for start in range(0, 2000, 200):
            await producer.send([envelope(n) for n in range(start, start + 200)])

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.all_in.wait(), timeout=60)
        await asyncio.sleep(0.3)  # anything delivered twice would show up now
        stop.set()
        await asyncio.gather(*consumers)

        every = [n for numbers in tally.handled.values() for n in numbers]
        duplicates = [n for n, times in Counter(every).items() if times > 1]
        assert duplicates == []
        assert sorted(every) == list(range(2000))
        assert tally.handled.get("first"), "both consumers should have taken a share"
        assert tally.handled.get("second"), "both consumers should have taken a share"
        assert await producer.depth() == 0
    finally:
        if first_db is not database:
            await first_db.close()
            await second_db.close()


async def test_an_ack_from_a_consumer_whose_lease_ran_out_does_not_remove_the_redelivery(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(lease_seconds=0.5)
    await channel.send([envelope(1)])
    stale = await channel.receive(1, timeout=2.0)
    await asyncio.sleep(0.7)
    fresh = await channel.receive(1, timeout=2.0)
    assert [d.delivery_count for d in stale + fresh] == [1, 2]

    await channel.ack(stale)
    assert await channel.depth() == 1
    await channel.nack(stale)
    await channel.extend_lease(stale, 10.0)
    assert await channel.receive(1, timeout=0.3) == []

    await channel.ack(fresh)
    assert await channel.depth() == 0


async def test_delays_and_leases_follow_the_app_clock_not_the_database_clock(
    open_channel: OpenChannel,
) -> None:
    clock = ManualClock()
    channel = await open_channel(clock=clock, lease_seconds=10.0)
    await channel.send([envelope(1, **{h.DELIVER_AT: repr(clock.now() + 60)})])

    assert await channel.receive(1, timeout=0.2) == []
    waiting = asyncio.ensure_future(channel.receive(1, timeout=5.0))
    await asyncio.sleep(0.1)
    clock.advance(61)
    received = await waiting
    assert [d.envelope.message_id for d in received] == ["m-1"]

    clock.advance(11)  # the lease ran out on the app's clock
    again = await channel.receive(1, timeout=1.0)
    assert [d.delivery_count for d in again] == [2]
    await channel.ack(again)


async def test_binary_bodies_and_unicode_headers_come_back_byte_for_byte(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    body = bytes(range(256)) * 300  # 76.8 KB, past MySQL's plain BLOB limit
    sent = Envelope(body, {h.MESSAGE_ID: "m-bin", "tenant": "Zürich ✓", "quote": 'it\'s "x"'})
    await channel.send([sent])

    received = await channel.receive(1, timeout=2.0)

    assert received[0].envelope.body == body
    assert received[0].envelope.headers == sent.headers
    await channel.ack(received)


async def test_a_batch_larger_than_one_statement_is_stored_whole_and_acked_whole(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    await channel.send([envelope(n) for n in range(1200)])
    assert await channel.depth() == 1200

    received: list[Delivery] = []
    while len(received) < 1200:
        batch = await channel.receive(1200 - len(received), timeout=2.0)
        assert batch, "messages went missing"
        received += batch
    await channel.ack(received)

    assert sorted(int(d.envelope.body) for d in received) == list(range(1200))
    assert await channel.depth() == 0


async def test_a_higher_priority_message_sent_later_is_received_first(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    await channel.send([envelope(n) for n in range(5)])
    await channel.send([envelope(99, **{h.PRIORITY: "3"})])

    first = await channel.receive(1, timeout=2.0)
    rest = await channel.receive(10, timeout=2.0)

    assert [d.envelope.message_id for d in first] == ["m-99"]
    assert [d.envelope.message_id for d in rest] == [f"m-{n}" for n in range(5)]
    await channel.ack(first + rest)


async def test_four_consumers_with_different_batch_sizes_share_mixed_priorities_exactly_once(
    url: str, database: Database, open_channel: OpenChannel
) -> None:
    servers = not url.startswith("sqlite")
    databases = [Database(url) if servers else database for _ in range(4)]
    name = f"it-{uuid.uuid4().hex[:12]}"
    try:
        producer = await open_channel(name)
        consumers = [await open_channel(name, db=db) for db in databases]
        tally = Tally(4000)
        stop = asyncio.Event()

        async def consume_in(channel: SqlChannel, label: str, batch: int) -> None:
            while not stop.is_set():
                deliveries = await channel.receive(batch, timeout=0.2)
                tally.add(label, [int(d.envelope.body) for d in deliveries])
                await channel.ack(deliveries)

        running = [
            asyncio.ensure_future(consume_in(channel, f"c{batch}", batch))
            for channel, batch in zip(consumers, (7, 13, 50, 100), strict=True)
        ]
        for start in range(0, 4000, 400):
            await producer.send([envelope(n, **{h.PRIORITY: str(n % 3)}) for n in range(start, start + 400)])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.all_in.wait(), timeout=60)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*running)

        every = [n for numbers in tally.handled.values() for n in numbers]
        assert [n for n, times in Counter(every).items() if times > 1] == []
        assert sorted(every) == list(range(4000))
    finally:
        if servers:
            for db in databases:
                await db.close()


async def test_a_message_falling_due_between_a_claim_and_the_wait_is_not_overlooked(
    open_channel: OpenChannel,
) -> None:
    clock = ManualClock()
    channel = await open_channel(clock=clock, poll_interval=30.0)
    assert await channel.receive(1, timeout=1.5) == []  # idle: the poll pause has grown past 1 s
    await channel.send([envelope(1, **{h.DELIVER_AT: repr(clock.now() + 1)})])
    queue = channel._queue
    assert queue is not None
    claim = queue.claim

    async def claim_then_let_time_pass(*arguments: object) -> object:
        rows = await claim(*arguments)  # type: ignore[arg-type]
        clock.advance(2)  # the message falls due right after this claim looked
        return rows

    queue.claim = claim_then_let_time_pass  # type: ignore[method-assign]
    started = time.monotonic()
    received = await channel.receive(1, timeout=3.0)
    queue.claim = claim  # type: ignore[method-assign]

    assert [d.envelope.message_id for d in received] == ["m-1"]
    assert time.monotonic() - started < 0.5  # not after a whole poll pause
    await channel.ack(received)


async def test_a_receive_cancelled_at_any_point_of_its_claim_leaves_every_message_receivable_at_once(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    await channel.send([envelope(n) for n in range(3)])
    for steps in range(15):
        receiving = asyncio.ensure_future(channel.receive(10, 0.5))
        for _ in range(steps):
            await asyncio.sleep(0)
        receiving.cancel()
        try:
            finished_first = await receiving
        except asyncio.CancelledError:
            pass
        else:
            await channel.nack(finished_first)

        # Neither leased to nobody until the lease runs out nor holding a lock that blocks the rest.
        deliveries = await asyncio.wait_for(channel.receive(10, 0.0), 5)
        assert sorted(d.envelope.body for d in deliveries) == [b"0", b"1", b"2"], f"cancelled after {steps}"
        await channel.nack(deliveries)


@pytest.mark.postgres
async def test_two_receivers_waiting_for_messages_sent_one_at_a_time_claim_once_per_message() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    async with sender_and_consumer(POSTGRES_URL) as (sender, consumer, _database):
        claims: list[int] = []
        queue = consumer._queue
        assert queue is not None
        claim = queue.claim

        async def counted_claim(*arguments: Any) -> Any:
            rows = await claim(*arguments)
            claims.append(len(rows))
            return rows

        queue.claim = counted_claim  # type: ignore[method-assign]
        received: list[Delivery] = []

        async def receive_like_a_consumer() -> None:
            while len(received) < 20:
                got = await consumer.receive(10, timeout=0.5)
                received.extend(got)
                await consumer.ack(got)

        receivers = [asyncio.ensure_future(receive_like_a_consumer()) for _ in range(2)]
        await asyncio.sleep(0.2)
        del claims[:]  # the first look of each receiver
        for n in range(20):
            await sender.send([Envelope(b"x", {h.MESSAGE_ID: f"m-{n}"})])
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*receivers), 10)

    assert sorted(d.envelope.message_id for d in received) == sorted(f"m-{n}" for n in range(20))
    # Each notification wakes one receiver; no receiver polls while notifications arrive.
    assert claims.count(0) <= 2, claims
