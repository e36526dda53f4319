from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from tidings import (
    App,
    InMemoryChannel,
    MessageContext,
    RetryPolicy,
    asynchronous,
    command_handler,
    deduplicated,
    event_handler,
    handler_timeout,
    retry,
)
from tidings import headers as h
from tidings.middleware.deduplication import InMemoryDeduplicationStore
from tidings.testing import FlowTest


@dataclass
class Charge:
    payment_id: str
    amount: int


@dataclass
class OrderPlaced:
    order_id: str


async def test_a_redelivered_message_is_not_handled_twice_by_the_same_endpoint() -> None:
    runs: list[str] = []

    @asynchronous("work")
    @event_handler
    async def ship(event: OrderPlaced) -> None:
        runs.append(event.order_id)

    app = App("shop", handlers=[ship], channels=[InMemoryChannel("work")])
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1"))
        [original] = await flow.app.channel("work").receive(1, timeout=0)
        await flow.app.channel("work").nack([original])  # it comes back, as after a lost ack
        await flow.app.channel("work").send([original.envelope])  # and once more, a duplicate send
        stats = await flow.run()

    assert runs == ["o-1"]
    assert (stats.handled, stats.duplicates) == (1, 1)


async def test_copies_of_one_event_for_different_endpoints_are_not_duplicates_of_each_other() -> None:
    runs: list[str] = []

    @asynchronous("work")
    @event_handler
    async def first(event: OrderPlaced) -> None:
        runs.append("first")

    @asynchronous("work")
    @event_handler
    async def second(event: OrderPlaced) -> None:
        runs.append("second")

    app = App("shop", handlers=[first, second], channels=[InMemoryChannel("work")])
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1"))
        await flow.run()

    assert sorted(runs) == ["first", "second"]


async def test_a_duplicate_sent_with_the_same_message_id_is_skipped() -> None:
    runs: list[str] = []

    @asynchronous("work")
    @event_handler
    async def ship(event: OrderPlaced) -> None:
        runs.append(event.order_id)

    app = App("shop", handlers=[ship], channels=[InMemoryChannel("work")])
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: "same-id"})
        await flow.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: "same-id"})
        await flow.run()

    assert runs == ["o-1"]


async def test_a_failed_handling_leaves_no_record_so_its_retry_runs() -> None:
    runs: list[int] = []

    @asynchronous("work")
    @retry(max_attempts=3)
    @event_handler
    async def flaky(event: OrderPlaced, context: MessageContext) -> None:
        runs.append(context.attempt)
        if context.attempt == 1:
            raise ConnectionError("first try fails")

    app = App("shop", handlers=[flaky], channels=[InMemoryChannel("work")])
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"))
        await flow.run()
        flow.advance(10)
        await flow.run()

    assert runs == [1, 2]


async def test_commands_can_be_deduplicated_on_a_header_at_the_bus() -> None:
    charged: list[int] = []

    @command_handler
    @deduplicated(header="payment-id")
    async def charge(command: Charge) -> str:
        charged.append(command.amount)
        return "charged"

    app = App("shop", handlers=[charge])
    async with app:
        first = await app.commands.send(Charge("p-1", 10), headers={"payment-id": "p-1"})
        again = await app.commands.send(Charge("p-1", 10), headers={"payment-id": "p-1"})
        other = await app.commands.send(Charge("p-2", 5), headers={"payment-id": "p-2"})

    assert (first, again, other) == ("charged", None, "charged")
    assert charged == [10, 5]


async def test_a_key_function_and_a_shared_tracking_name_deduplicate_across_handlers() -> None:
    runs: list[str] = []

    @asynchronous("work")
    @deduplicated(key=lambda command: command.payment_id, tracking_name="payments")
    @command_handler
    async def charge_card(command: Charge) -> None:
        runs.append(f"card:{command.payment_id}")

    @asynchronous("work")
    @deduplicated(key=lambda event: event.order_id, tracking_name="payments")
    @event_handler
    async def charge_order(event: OrderPlaced) -> None:
        runs.append(f"order:{event.order_id}")

    app = App("shop", handlers=[charge_card, charge_order], channels=[InMemoryChannel("work")])
    async with FlowTest(app) as flow:
        await flow.send(Charge("x-1", 1))
        await flow.send(Charge("x-1", 2))
        await flow.publish(OrderPlaced("x-1"))
        await flow.publish(OrderPlaced("x-2"))
        await flow.run()

    assert runs == ["card:x-1", "order:x-2"]


async def test_deduplication_can_be_turned_off_for_an_app() -> None:
    runs: list[str] = []

    @asynchronous("work")
    @event_handler
    async def ship(event: OrderPlaced) -> None:
        runs.append(event.order_id)

    app = App("shop", handlers=[ship], channels=[InMemoryChannel("work")], deduplicate=False)
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: "same-id"})
        await flow.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: "same-id"})
        await flow.run()

    assert runs == ["o-1", "o-1"]


async def test_records_older_than_the_retention_window_are_purged() -> None:
    store = InMemoryDeduplicationStore()
    runs: list[str] = []

    @asynchronous("work")
    @event_handler
    async def ship(event: OrderPlaced) -> None:
        runs.append(event.order_id)

    app = App(
        "shop",
        handlers=[ship],
        channels=[InMemoryChannel("work")],
        deduplication_store=store,
        deduplication_retention=timedelta(hours=1),
    )
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1"), headers={h.MESSAGE_ID: "same-id"})
        await flow.run()
        assert await store.contains("ship", "same-id")

        flow.advance(timedelta(hours=2))
        await flow.publish(OrderPlaced("o-2"))  # any handling starts the periodic purge
        await flow.run()
        await asyncio.sleep(0)

        assert not await store.contains("ship", "same-id")
        assert len(store._handled) == 1  # only the record of o-2 is left


async def test_without_a_database_a_worker_keeps_only_its_latest_records_and_still_skips_a_repeat() -> None:
    store = InMemoryDeduplicationStore(max_records=20)
    runs: list[str] = []

    @asynchronous("work")
    @event_handler
    async def ship(event: OrderPlaced) -> None:
        runs.append(event.order_id)

    app = App("shop", handlers=[ship], channels=[InMemoryChannel("work")], deduplication_store=store)
    async with FlowTest(app) as flow:
        for n in range(200):
            await flow.publish(OrderPlaced(f"o-{n}"), headers={h.MESSAGE_ID: f"m-{n}"})
        await flow.publish(OrderPlaced("o-199"), headers={h.MESSAGE_ID: "m-199"})
        await flow.run()

    assert len(runs) == 200
    assert len(store._handled) <= 22
    assert await store.contains("ship", "m-199")
    assert not await store.contains("ship", "m-0")


class SlowPurgeStore(InMemoryDeduplicationStore):
    """Purges take as long as a big table's would: until the app stops them."""

    def __init__(self) -> None:
        super().__init__()
        self.purge_started = asyncio.Event()
        self.purge_cancelled = False

    async def purge(self, older_than: float) -> int:
        self.purge_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.purge_cancelled = True
            raise
        return 0


async def test_stopping_the_app_ends_a_purge_still_running_before_the_stores_close() -> None:
    store = SlowPurgeStore()

    @asynchronous("work")
    @event_handler
    async def ship(event: OrderPlaced) -> None:
        pass

    app = App("shop", handlers=[ship], channels=[InMemoryChannel("work")], deduplication_store=store)
    async with app:
        await app.events.publish(OrderPlaced("o-1"))
        await app.run("work", stop_when_empty=True)
        await asyncio.wait_for(store.purge_started.wait(), timeout=1.0)

    assert store.purge_cancelled
    purges = [task for task in asyncio.all_tasks() if "._purge" in task.get_coro().__qualname__]
    assert purges == []


async def test_a_handler_running_past_its_timeout_is_cancelled_and_retried() -> None:
    attempts: list[int] = []

    @asynchronous("work")
    @handler_timeout(timedelta(milliseconds=50))
    @retry(RetryPolicy(max_attempts=2))
    @event_handler
    async def slow(event: OrderPlaced, context: MessageContext) -> None:
        attempts.append(context.attempt)
        if context.attempt == 1:
            await asyncio.sleep(10)

    app = App("shop", handlers=[slow], channels=[InMemoryChannel("work")])
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1"))
        first = await flow.run()
        flow.advance(60)
        second = await flow.run()

    assert attempts == [1, 2]
    assert (first.retried, second.handled) == (1, 1)
