from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from tidings import (
    App,
    Backoff,
    DeadLetterFilter,
    EventBus,
    InMemoryChannel,
    MessageContext,
    RetryPolicy,
    asynchronous,
    event_handler,
    retry,
)
from tidings import headers as h
from tidings._message import Envelope
from tidings.testing import FlowTest


@dataclass
class OrderPlaced:
    order_id: str


class PaymentDeclined(Exception):
    pass


def no_jitter(**options: float) -> Backoff:
    return Backoff.exponential(jitter=0.0, **options)


def test_exponential_backoff_grows_by_the_multiplier_up_to_the_cap() -> None:
    backoff = Backoff.exponential(initial=1, multiplier=3, max_delay=20, jitter=0)

    assert [backoff.delay(n) for n in range(1, 6)] == [1, 3, 9, 20, 20]


def test_jitter_moves_a_delay_by_at_most_its_fraction() -> None:
    backoff = Backoff.exponential(initial=10, jitter=0.2)

    assert backoff.delay(1, random_fraction=0.0) == pytest.approx(8.0)
    assert backoff.delay(1, random_fraction=1.0) == pytest.approx(12.0)


def test_fixed_and_custom_backoffs_follow_their_schedule() -> None:
    assert [Backoff.fixed(timedelta(seconds=30)).delay(n) for n in (1, 5)] == [30, 30]
    custom = Backoff.custom([60, 300, timedelta(hours=1)])
    assert [custom.delay(n) for n in (1, 2, 3, 4)] == [60, 300, 3600, 3600]


async def test_delayed_retries_follow_the_backoff_then_the_message_is_dead_lettered() -> None:
    tries: list[tuple[float, int]] = []

    @asynchronous("work")
    @event_handler
    async def charge(event: OrderPlaced, context: MessageContext) -> None:
        tries.append((context.app.clock.now(), context.attempt))
        raise PaymentDeclined(f"card declined for {event.order_id}")

    policy = RetryPolicy(max_attempts=4, backoff=no_jitter(initial=1, multiplier=2))
    app = App("shop", handlers=[charge], channels=[InMemoryChannel("work")], retry_policy=policy)
    async with FlowTest(app, raise_errors=False) as flow:
        start = flow.clock.now()
        await flow.publish(OrderPlaced("o-1"), headers={"tenant": "acme"})
        for _ in range(20):
            await flow.run()
            flow.advance(0.5)
        letters = await flow.app.dead_letters.list()

    assert [(round(at - start, 1), attempt) for at, attempt in tries] == [
        (0.0, 1),
        (1.0, 2),
        (3.0, 3),
        (7.0, 4),
    ]
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.endpoint, letter.channel, letter.attempts, letter.reason) == (
        "charge",
        "work",
        4,
        "failed",
    )
    assert letter.exception_type == "tests.unit.test_resilience.PaymentDeclined"
    assert letter.exception_message == "card declined for o-1"
    assert "raise PaymentDeclined" in letter.traceback
    assert letter.payload == '{"order_id":"o-1"}'
    assert letter.headers["tenant"] == "acme"
    assert (round(letter.first_failed_at - start, 1), round(letter.last_failed_at - start, 1)) == (0.0, 7.0)


async def test_instant_retries_rerun_in_process_before_a_delayed_retry() -> None:
    attempts: list[int] = []

    @asynchronous("work")
    @event_handler
    async def flaky(event: OrderPlaced, context: MessageContext) -> None:
        attempts.append(context.attempt)
        if len(attempts) < 3:
            raise ConnectionError("blip")

    policy = RetryPolicy(instant_retries=2)
    app = App("shop", handlers=[flaky], channels=[InMemoryChannel("work")], retry_policy=policy)
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"))
        stats = await flow.run()

    assert attempts == [1, 1, 1]
    assert (stats.handled, stats.retried) == (1, 0)


@dataclass
class ReceiptSent:
    order_id: str


async def test_what_a_failed_handling_sent_is_dropped_and_only_the_successful_attempt_sends() -> None:
    attempts: list[int] = []
    receipts: list[str] = []

    @asynchronous("work")
    @event_handler
    async def charge(event: OrderPlaced, context: MessageContext, events: EventBus) -> None:
        attempts.append(context.attempt)
        await events.publish(ReceiptSent(f"{event.order_id}/attempt-{len(attempts)}"))
        if len(attempts) < 3:
            raise PaymentDeclined("declined")

    @asynchronous("receipts")
    @event_handler
    async def mail_receipt(event: ReceiptSent) -> None:
        receipts.append(event.order_id)

    policy = RetryPolicy(instant_retries=1, backoff=no_jitter(initial=1))
    app = App(
        "shop",
        handlers=[charge, mail_receipt],
        channels=[InMemoryChannel("work"), InMemoryChannel("receipts")],
        retry_policy=policy,
    )
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"))
        failing = await flow.run()
        flow.advance(1)
        succeeding = await flow.run()

    # The first attempt, its instant retry, then a delayed retry: only the last one's receipt went out.
    assert attempts == [1, 1, 2]
    assert receipts == ["o-1/attempt-3"]
    assert (failing.failed, failing.retried, failing.handled) == (2, 1, 0)
    assert (succeeding.failed, succeeding.handled) == (0, 2)


async def test_exceptions_that_are_never_retried_go_straight_to_the_dead_letter() -> None:
    runs: list[int] = []

    @asynchronous("work")
    @retry(RetryPolicy(never_retry=(PaymentDeclined,)))
    @event_handler
    async def charge(event: OrderPlaced) -> None:
        runs.append(1)
        raise PaymentDeclined("no")

    @asynchronous("work")
    @retry(retry_on=(ConnectionError,), max_attempts=3)
    @event_handler
    async def notify(event: OrderPlaced) -> None:
        runs.append(2)
        raise ValueError("not a connection problem")

    app = App("shop", handlers=[charge, notify], channels=[InMemoryChannel("work")])
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"))
        stats = await flow.run()
        flow.advance(3600)
        await flow.run()

        assert sorted(runs) == [1, 2]
        assert stats.dead_lettered == 2
        assert await flow.app.dead_letters.count() == 2


async def test_a_channel_can_have_its_own_retry_policy_and_a_handler_overrides_both() -> None:
    runs: dict[str, int] = {"default": 0, "payments": 0, "own": 0}

    def failing(name: str, channel: str) -> object:
        @asynchronous(channel)
        @event_handler(endpoint_id=name)
        async def handle(event: OrderPlaced) -> None:
            runs[name] += 1
            raise RuntimeError(name)

        return handle

    own = retry(max_attempts=3, backoff=no_jitter(initial=1))(failing("own", "payments"))
    app = App(
        "shop",
        handlers=[failing("default", "work"), failing("payments", "payments"), own],
        channels=[InMemoryChannel("work"), InMemoryChannel("payments")],
        retry_policy=RetryPolicy(max_attempts=1),
        channel_retry_policies={"payments": RetryPolicy(max_attempts=2, backoff=no_jitter(initial=1))},
    )
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"))
        for _ in range(6):
            await flow.run()
            flow.advance(10)

    assert runs == {"default": 1, "payments": 2, "own": 3}


async def test_a_replayed_dead_letter_runs_the_same_endpoint_once_with_attempts_reset() -> None:
    broken = True
    seen: list[tuple[str, int, str | None]] = []

    @asynchronous("work")
    @event_handler
    async def ship(event: OrderPlaced, context: MessageContext) -> None:
        if broken:
            raise RuntimeError("warehouse offline")
        seen.append((event.order_id, context.attempt, context.headers.get(h.REPLAYED)))

    @asynchronous("work")
    @event_handler
    async def sibling(event: OrderPlaced) -> None:
        seen.append(("sibling", 0, None))

    app = App(
        "shop",
        handlers=[ship, sibling],
        channels=[InMemoryChannel("work")],
        retry_policy=RetryPolicy(max_attempts=2, backoff=no_jitter(initial=1)),
    )
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"))
        await flow.run()
        flow.advance(2)
        await flow.run()
        [letter] = await flow.app.dead_letters.list()

        broken = False  # the fault is fixed
        assert await flow.app.dead_letters.replay(letter.id) is not None
        await flow.run()

        assert await flow.app.dead_letters.count() == 0
    assert seen == [("sibling", 0, None), ("o-1", 1, letter.id)]


async def test_dead_letters_can_be_filtered_replayed_and_deleted_in_bulk() -> None:
    fail = True
    handled: list[str] = []

    @asynchronous("work")
    @retry(RetryPolicy.none())
    @event_handler
    async def first(event: OrderPlaced) -> None:
        if fail:
            raise KeyError(event.order_id)
        handled.append(f"first:{event.order_id}")

    @asynchronous("work")
    @retry(RetryPolicy.none())
    @event_handler
    async def second(event: OrderPlaced) -> None:
        if fail:
            raise ValueError(event.order_id)
        handled.append(f"second:{event.order_id}")

    app = App("shop", handlers=[first, second], channels=[InMemoryChannel("work")])
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("a"), headers={"tenant": "acme"})
        await flow.publish(OrderPlaced("b"), headers={"tenant": "globex"})
        await flow.run()
        letters = flow.app.dead_letters

        assert await letters.count() == 4
        assert await letters.count(DeadLetterFilter(endpoint="first")) == 2
        assert await letters.count(DeadLetterFilter(exception_type="ValueError")) == 2
        assert await letters.count(DeadLetterFilter(header=("tenant", "acme"))) == 2
        assert await letters.count(DeadLetterFilter(endpoint="second", header=("tenant", "acme"))) == 1

        fail = False
        assert await letters.replay_all(DeadLetterFilter(header=("tenant", "acme"))) == 2
        await flow.run()
        assert sorted(handled) == ["first:a", "second:a"]

        assert await letters.delete_all(DeadLetterFilter(endpoint="first")) == 1
        assert [letter.endpoint for letter in await letters.list()] == ["second"]


async def test_a_message_for_an_unknown_endpoint_is_dead_lettered_and_the_consumer_goes_on() -> None:
    handled: list[str] = []

    @asynchronous("work")
    @event_handler
    async def known(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    app = App("shop", handlers=[known], channels=[InMemoryChannel("work")])
    async with FlowTest(app, raise_errors=False) as flow:
        stranded = Envelope(b'{"order_id": "x"}', {h.ENDPOINT: "renamed_handler", h.MESSAGE_ID: "m-9"})
        await flow.app.channel("work").send([stranded])
        await flow.publish(OrderPlaced("o-1"))
        await flow.run()
        [letter] = await flow.app.dead_letters.list()

    assert handled == ["o-1"]
    assert (letter.reason, letter.endpoint, letter.message_id) == (
        "unknown endpoint",
        "renamed_handler",
        "m-9",
    )
    assert "renamed_handler" in letter.exception_message


async def test_expired_messages_can_be_dead_lettered_instead_of_dropped() -> None:
    @asynchronous("work")
    @event_handler
    async def late(event: OrderPlaced) -> None:
        raise AssertionError("an expired message must not be handled")

    app = App("shop", handlers=[late], channels=[InMemoryChannel("work")], expired_messages="dead-letter")
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"), time_to_live=timedelta(seconds=10))
        flow.advance(11)
        stats = await flow.run()
        [letter] = await flow.app.dead_letters.list()

    assert stats.expired == 1
    assert letter.reason == "expired"


async def test_in_a_flow_test_handler_errors_are_raised_instead_of_retried() -> None:
    @asynchronous("work")
    @event_handler
    async def broken(event: OrderPlaced) -> None:
        raise PaymentDeclined("raised into the test")

    app = App("shop", handlers=[broken], channels=[InMemoryChannel("work")])
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1"))
        with pytest.raises(PaymentDeclined):
            await flow.run()

        assert await flow.app.dead_letters.count() == 0
