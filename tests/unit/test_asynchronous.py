from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import msgspec
import pydantic
import pytest

from tidings import (
    App,
    Endpoint,
    EventBus,
    Headers,
    InMemoryChannel,
    MessageContext,
    Middleware,
    asynchronous,
    command_handler,
    delayed,
    event_handler,
    priority,
    scoped,
    time_to_live,
    with_middleware,
)
from tidings import headers as h
from tidings._message import Envelope
from tidings.exceptions import SerializationError
from tidings.middleware import CallNext, Outgoing, SendNext
from tidings.testing import FlowTest


@dataclass
class OrderPlaced:
    order_id: str
    total: int


@dataclass
class PlaceOrder:
    order_id: str
    total: int


class PaymentModel(pydantic.BaseModel):
    order_id: str
    amount: int


class ShipmentStruct(msgspec.Struct):
    order_id: str
    parcels: int


class RefundDict(TypedDict):
    order_id: str
    amount: int


def channels(*names: str) -> list[InMemoryChannel]:
    return [InMemoryChannel(name) for name in names]


async def test_an_event_with_three_asynchronous_subscribers_on_two_channels_becomes_three_copies() -> None:
    @asynchronous("mail")
    @event_handler
    async def receipt(event: OrderPlaced) -> None: ...

    @asynchronous("mail")
    @event_handler
    async def newsletter(event: OrderPlaced) -> None: ...

    @asynchronous("stock")
    @event_handler
    async def reserve(event: OrderPlaced) -> None: ...

    app = App("shop", handlers=[receipt, newsletter, reserve], channels=channels("mail", "stock"))
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1", 10))

        mail = await flow.app.channel("mail").receive(10, timeout=0)
        stock = await flow.app.channel("stock").receive(10, timeout=0)

    endpoints = sorted(d.envelope.headers[h.ENDPOINT] for d in mail + stock)
    assert endpoints == ["newsletter", "receipt", "reserve"]
    assert len({d.envelope.message_id for d in mail + stock}) == 1
    assert all(d.envelope.body == b'{"order_id":"o-1","total":10}' for d in mail + stock)


async def test_when_one_subscriber_fails_the_others_ran_exactly_once_and_are_never_rerun() -> None:
    runs: dict[str, int] = {"receipt": 0, "reserve": 0, "audit": 0, "flaky": 0}

    @asynchronous("mail")
    @event_handler
    async def receipt(event: OrderPlaced) -> None:
        runs["receipt"] += 1

    @asynchronous("stock")
    @event_handler
    def reserve(event: OrderPlaced) -> None:
        runs["reserve"] += 1

    @event_handler
    async def audit(event: OrderPlaced) -> None:
        runs["audit"] += 1

    @asynchronous("mail")
    @event_handler
    async def flaky(event: OrderPlaced) -> None:
        runs["flaky"] += 1
        if runs["flaky"] < 3:
            raise RuntimeError("mail server down")

    app = App("shop", handlers=[receipt, reserve, audit, flaky], channels=channels("mail", "stock"))
    async with FlowTest(app, raise_errors=False) as flow:
        await flow.publish(OrderPlaced("o-1", 10))
        assert runs["audit"] == 1  # the sync subscriber ran inline

        await flow.run()
        for _ in range(5):
            flow.advance(timedelta(minutes=2))
            await flow.run()

    assert runs == {"receipt": 1, "reserve": 1, "audit": 1, "flaky": 3}


async def test_a_failed_sync_subscriber_sends_no_asynchronous_copy() -> None:
    @asynchronous("mail")
    @event_handler
    async def receipt(event: OrderPlaced) -> None: ...

    @event_handler
    async def validate(event: OrderPlaced) -> None:
        raise ValueError("invalid order")

    app = App("shop", handlers=[receipt, validate], channels=channels("mail"))
    async with FlowTest(app) as flow:
        with pytest.raises(ValueError, match="invalid order"):
            await flow.publish(OrderPlaced("o-1", 10))

        assert await flow.depth("mail") == 0


async def test_messages_a_failing_handler_sent_are_never_delivered() -> None:
    @asynchronous("work")
    @command_handler
    async def place(command: PlaceOrder, events: EventBus) -> None:
        await events.publish(OrderPlaced(command.order_id, command.total))
        raise RuntimeError("crash after publishing")

    @asynchronous("mail")
    @event_handler
    async def receipt(event: OrderPlaced) -> None: ...

    app = App("shop", handlers=[place, receipt], channels=channels("work", "mail"))
    async with FlowTest(app) as flow:
        await flow.send(PlaceOrder("o-1", 1))
        with pytest.raises(RuntimeError):
            await flow.run("work")

        assert await flow.depth("mail") == 0
        assert await flow.depth("work") == 1  # given back, not lost


async def test_payloads_of_every_kind_travel_as_json_and_decode_into_the_handlers_type() -> None:
    got: list[Any] = []

    @asynchronous("work")
    @event_handler
    async def on_payment(event: PaymentModel) -> None:
        got.append(event)

    @asynchronous("work")
    @event_handler
    async def on_shipment(event: ShipmentStruct) -> None:
        got.append(event)

    @asynchronous("work")
    @event_handler("refund.issued")
    async def on_refund(event: RefundDict) -> None:
        got.append(event)

    @asynchronous("work")
    @event_handler
    async def on_order(event: OrderPlaced) -> None:
        got.append(event)

    app = App("shop", handlers=[on_payment, on_shipment, on_refund, on_order], channels=channels("work"))
    async with FlowTest(app) as flow:
        await flow.publish(PaymentModel(order_id="o-1", amount=5))
        await flow.publish(ShipmentStruct("o-1", 2))
        await flow.publish({"order_id": "o-1", "amount": 3}, name="refund.issued")
        await flow.publish(OrderPlaced("o-1", 9))
        await flow.run()

    assert got == [
        PaymentModel(order_id="o-1", amount=5),
        ShipmentStruct("o-1", 2),
        {"order_id": "o-1", "amount": 3},
        OrderPlaced("o-1", 9),
    ]


async def test_a_payload_that_does_not_decode_names_the_endpoint_and_field_and_the_consumer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[OrderPlaced] = []

    @asynchronous("work")
    @event_handler
    async def on_order(event: OrderPlaced) -> None:
        handled.append(event)

    app = App("shop", handlers=[on_order], channels=channels("work"))
    async with FlowTest(app, raise_errors=False) as flow:
        bad = Envelope(b'{"order_id": "o-1", "total": "ten"}', {h.ENDPOINT: "on_order", h.MESSAGE_ID: "m-1"})
        await flow.app.channel("work").send([bad])
        await flow.publish(OrderPlaced("o-2", 2))

        with caplog.at_level(logging.ERROR, logger="tidings"):
            stats = await flow.run()

        letters = await flow.app.dead_letters.list()

    assert handled == [OrderPlaced("o-2", 2)]
    assert (stats.handled, stats.dead_lettered) == (1, 1)
    assert "endpoint 'on_order' could not decode message m-1 into OrderPlaced" in caplog.text
    assert "$.total" in caplog.text
    assert [(letter.message_id, letter.endpoint, letter.attempts) for letter in letters] == [
        ("m-1", "on_order", 1)
    ]
    assert letters[0].exception_type == "tidings.exceptions.SerializationError"
    assert "$.total" in letters[0].exception_message


async def test_a_decode_error_raised_into_a_test_is_a_serialization_error() -> None:
    @asynchronous("work")
    @event_handler
    async def on_payment(event: PaymentModel) -> None: ...

    app = App("shop", handlers=[on_payment], channels=channels("work"))
    async with FlowTest(app) as flow:
        await flow.app.channel("work").send(
            [Envelope(b'{"order_id": 1}', {h.ENDPOINT: "on_payment", h.MESSAGE_ID: "m-1"})]
        )
        with pytest.raises(SerializationError, match=r"on_payment.*field 'amount'") as raised:
            await flow.run()

    assert raised.value.envelope is not None


async def test_a_delayed_handlers_copy_waits_on_the_clock_while_siblings_run_now() -> None:
    ran: list[str] = []

    @asynchronous("work")
    @delayed(timedelta(minutes=5))
    @event_handler
    async def later(event: OrderPlaced) -> None:
        ran.append("later")

    @asynchronous("work")
    @event_handler
    async def now(event: OrderPlaced) -> None:
        ran.append("now")

    app = App("shop", handlers=[later, now], channels=channels("work"))
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1", 1))
        await flow.run()
        assert ran == ["now"]

        flow.advance(timedelta(minutes=4, seconds=59))
        await flow.run()
        assert ran == ["now"]

        flow.advance(timedelta(seconds=1))
        await flow.run()
        assert ran == ["now", "later"]


async def test_a_sender_can_delay_until_a_time_or_by_a_function_of_the_message() -> None:
    ran: list[str] = []

    @asynchronous("work")
    @delayed(lambda event, headers: timedelta(seconds=event.total))
    @event_handler
    async def computed(event: OrderPlaced) -> None:
        ran.append(event.order_id)

    app = App("shop", handlers=[computed], channels=channels("work"))
    async with FlowTest(app) as flow:
        at = datetime.fromtimestamp(flow.clock.now(), UTC) + timedelta(seconds=30)
        await flow.publish(OrderPlaced("at", 1000), delay=at)
        await flow.publish(OrderPlaced("fn", 10))

        flow.advance(10)
        await flow.run()
        assert ran == ["fn"]
        flow.advance(20)
        await flow.run()
        assert ran == ["fn", "at"]


async def test_higher_priority_copies_are_handled_first() -> None:
    order: list[str] = []

    @asynchronous("work")
    @event_handler
    async def normal(event: OrderPlaced) -> None:
        order.append(f"normal-{event.order_id}")

    @asynchronous("work")
    @priority(5)
    @event_handler
    async def urgent(event: OrderPlaced) -> None:
        order.append(f"urgent-{event.order_id}")

    app = App("shop", handlers=[normal, urgent], channels=channels("work"))
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("1", 1))
        await flow.publish(OrderPlaced("2", 1))
        await flow.publish(OrderPlaced("3", 1), priority=9)
        await flow.app.run("work", stop_when_empty=True, concurrency=1, batch_size=1)

    assert order == ["normal-3", "urgent-3", "urgent-1", "urgent-2", "normal-1", "normal-2"]


async def test_an_expired_copy_is_dropped_and_counted_and_delay_priority_ttl_do_not_propagate() -> None:
    ran: list[str] = []
    seen: list[Headers] = []

    @asynchronous("work")
    @time_to_live(timedelta(seconds=30))
    @event_handler
    async def fresh_only(event: OrderPlaced, events: EventBus) -> None:
        ran.append(event.order_id)
        await events.publish(PlaceOrder(event.order_id, 0))

    @event_handler
    async def watch(event: PlaceOrder, headers: Headers) -> None:
        seen.append(dict(headers))

    app = App("shop", handlers=[fresh_only, watch], channels=channels("work"))
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("stale", 1))
        flow.advance(31)
        await flow.publish(OrderPlaced("fresh", 1), priority=3)
        stats = await flow.run()

    assert ran == ["fresh"]
    assert stats.expired == 1
    assert not {h.EXPIRES_AT, h.PRIORITY, h.DELIVER_AT} & set(seen[0])


async def test_a_message_whose_consumer_dies_before_ack_is_delivered_again() -> None:
    deliveries: list[int] = []

    @asynchronous("work")
    @event_handler
    async def handle(event: OrderPlaced, context: MessageContext) -> None:
        assert context.delivery is not None
        deliveries.append(context.delivery.delivery_count)

    app = App("shop", handlers=[handle], channels=[InMemoryChannel("work", lease_seconds=60)])
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1", 1))
        taken = await flow.app.channel("work").receive(10, timeout=0)  # taken by a consumer that died
        assert len(taken) == 1

        await flow.run()
        assert deliveries == []  # still leased to the dead consumer

        flow.advance(61)  # its lease runs out
        await flow.run()

    assert deliveries == [2]


async def test_a_consumer_cancelled_mid_handler_gives_the_message_back() -> None:
    started = asyncio.Event()
    runs: list[int] = []

    @asynchronous("work")
    @event_handler
    async def slow(event: OrderPlaced) -> None:
        runs.append(1)
        if len(runs) == 1:
            started.set()
            await asyncio.sleep(3600)

    app = App("shop", handlers=[slow], channels=channels("work"))
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1", 1))
        worker = asyncio.ensure_future(flow.app.run("work", drain_timeout=0))
        await started.wait()
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

        await flow.run()

    assert runs == [1, 1]


async def test_on_stop_in_flight_handlers_finish_and_unstarted_messages_stay_for_the_next_consumer() -> None:
    finished: list[str] = []
    release = asyncio.Event()

    @asynchronous("work")
    @event_handler
    async def handle(event: OrderPlaced) -> None:
        await release.wait()
        finished.append(event.order_id)

    app = App("shop", handlers=[handle], channels=channels("work"))
    async with FlowTest(app) as flow:
        for n in range(5):
            await flow.publish(OrderPlaced(str(n), 1))
        consumer = flow.app.consumer("work", concurrency=2, batch_size=2)
        running = asyncio.ensure_future(consumer.run())
        await _wait_until_in_flight(flow, 2)

        consumer.stop("test")
        release.set()
        stats = await running

        assert sorted(finished) == ["0", "1"]
        # The other three were received ahead of the workers (up to two batches wait); they go back
        # without costing an attempt.
        assert (stats.handled, stats.returned) == (2, 3)
        assert await flow.depth("work") == 3


async def test_a_handler_still_running_at_the_drain_deadline_gives_its_message_back() -> None:
    @asynchronous("work")
    @event_handler
    async def stuck(event: OrderPlaced) -> None:
        await asyncio.sleep(3600)

    app = App("shop", handlers=[stuck], channels=channels("work"))
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1", 1))
        consumer = flow.app.consumer("work", drain_timeout=0.1)
        running = asyncio.ensure_future(consumer.run())
        await _wait_until_in_flight(flow, 1)

        consumer.stop("test")
        stats = await running

        assert (stats.handled, stats.failed, stats.returned) == (0, 0, 1)
        redelivered = await flow.app.channel("work").receive(1, timeout=0)
        assert len(redelivered) == 1
        assert redelivered[0].envelope.attempt == 1


async def _wait_until_in_flight(flow: FlowTest, count: int) -> None:
    channel = flow.app.channel("work")
    assert isinstance(channel, InMemoryChannel)
    for _ in range(500):
        if len(channel._leased) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} messages never got in flight")


class Recorder(Middleware):
    def __init__(self, log: list[str], name: str, order: int = 0) -> None:
        self.log = log
        self.name = name
        self.order = order

    async def handle(self, context: MessageContext, call_next: CallNext) -> Any:
        self.log.append(f"{self.name}>{context.endpoint_id}")
        result = await call_next(context)
        self.log.append(f"{self.name}<{context.endpoint_id}")
        return result


class BeforeAfter(Middleware):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def before(self, context: MessageContext) -> None:
        self.log.append("before")

    async def after(self, context: MessageContext, result: Any) -> None:
        self.log.append(f"after:{result}")


class StampSends(Middleware):
    async def send(self, outgoing: Outgoing, call_next: SendNext) -> None:
        outgoing.envelope.headers["stamped"] = "yes"
        await call_next(outgoing)


async def test_middleware_run_in_order_around_handlers_and_can_be_scoped_or_attached_per_handler() -> None:
    log: list[str] = []

    @command_handler
    @with_middleware(Recorder(log, "own"))
    async def place(command: PlaceOrder) -> str:
        log.append("place")
        return "ok"

    @asynchronous("work")
    @event_handler
    async def placed(event: OrderPlaced, headers: Headers) -> None:
        log.append(f"placed stamped={headers.get('stamped')}")

    app = App(
        "shop",
        handlers=[place, placed],
        channels=channels("work"),
        middleware=[
            Recorder(log, "inner", order=5),
            Recorder(log, "outer", order=-5),
            scoped(Recorder(log, "async-only"), channels={"work"}),
            scoped(BeforeAfter(log), endpoints={"place"}),
            StampSends(),
        ],
    )
    async with FlowTest(app) as flow:
        await flow.send(PlaceOrder("o-1", 1))
        await flow.publish(OrderPlaced("o-1", 1))
        await flow.run()

    assert log == [
        "outer>place", "before", "inner>place", "own>place", "place", "own<place", "inner<place",
        "after:ok", "outer<place",
        "outer>placed", "async-only>placed", "inner>placed", "placed stamped=yes", "inner<placed",
        "async-only<placed", "outer<placed",
    ]  # fmt: skip


class PerEndpointCounter(Middleware):
    """Builds one step per endpoint, with the endpoint's counter already looked up."""

    def __init__(self) -> None:
        self.built: list[str] = []
        self.counts: dict[str, int] = {}

    def wrap(self, endpoint: Endpoint, call_next: CallNext) -> CallNext:
        self.built.append(endpoint.id)
        counts, key = self.counts, endpoint.id

        def count(context: MessageContext) -> Awaitable[Any]:
            counts[key] = counts.get(key, 0) + 1
            return call_next(context)

        return count


async def test_a_middleware_can_build_its_step_once_per_endpoint_with_wrap() -> None:
    handled: list[str] = []

    @asynchronous("work")
    @event_handler
    async def placed(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    @command_handler
    async def place(command: PlaceOrder) -> None:
        handled.append(command.order_id)

    counter = PerEndpointCounter()
    app = App("shop", handlers=[placed, place], channels=channels("work"), middleware=[counter])
    async with FlowTest(app) as flow:
        built_at_start = sorted(counter.built)
        for n in range(3):
            await flow.publish(OrderPlaced(f"o-{n}", 1))
        await flow.send(PlaceOrder("p-1", 1))
        await flow.run()

    # Built when an app is made (FlowTest makes its own from the one given), not per message.
    assert set(built_at_start) == {"place", "placed"}
    assert sorted(counter.built) == built_at_start
    assert counter.counts == {"placed": 3, "place": 1}
    assert sorted(handled) == ["o-0", "o-1", "o-2", "p-1"]


async def test_async_handlers_run_concurrently_up_to_the_concurrency_limit() -> None:
    running = 0
    peak = 0

    @asynchronous("work")
    @event_handler
    async def handle(event: OrderPlaced) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    app = App("shop", handlers=[handle], channels=channels("work"))
    async with FlowTest(app) as flow:
        for n in range(20):
            await flow.publish(OrderPlaced(str(n), 1))
        stats = await flow.app.run("work", concurrency=5, stop_when_empty=True)

    assert stats.handled == 20
    assert peak == 5


async def test_plain_def_handlers_run_in_worker_threads_with_the_context() -> None:
    import threading

    threads: set[str] = set()
    tenants: list[str | None] = []

    @asynchronous("work")
    @event_handler
    def handle(event: OrderPlaced, headers: Headers) -> None:
        threads.add(threading.current_thread().name)
        tenants.append(headers.get("tenant"))

    app = App("shop", handlers=[handle], channels=channels("work"))
    async with FlowTest(app) as flow:
        await flow.publish(OrderPlaced("o-1", 1), headers={"tenant": "acme"})
        await flow.run()

    assert tenants == ["acme"]
    assert all(name.startswith("tidings-shop") for name in threads)


async def test_a_consumer_stops_at_its_message_limit_leaving_the_rest() -> None:
    @asynchronous("work")
    @event_handler
    async def handle(event: OrderPlaced) -> None: ...

    app = App("shop", handlers=[handle], channels=channels("work"))
    async with FlowTest(app) as flow:
        for n in range(10):
            await flow.publish(OrderPlaced(str(n), 1))
        stats = await flow.app.run("work", message_limit=4, concurrency=1, batch_size=1)

        assert (stats.handled, stats.stopped_because) == (4, "message limit")
        assert await flow.depth("work") == 6


async def test_a_consumer_stops_at_its_time_limit() -> None:
    app = App("shop", channels=channels("work"))
    async with app:
        stats = await app.run("work", time_limit=0.2)

    assert stats.stopped_because == "time limit"


async def test_flow_test_records_commands_and_events_sent_by_anyone() -> None:
    @command_handler
    async def place(command: PlaceOrder, events: EventBus) -> None:
        await events.publish(OrderPlaced(command.order_id, command.total))

    app = App("shop", handlers=[place])
    async with FlowTest(app) as flow:
        await flow.send(PlaceOrder("o-1", 3))

    assert flow.recorded_commands == [PlaceOrder("o-1", 3)]
    assert flow.recorded_events == [OrderPlaced("o-1", 3)]


async def test_a_consumer_keeps_trying_a_channel_whose_receive_fails_and_recovers() -> None:
    handled: list[str] = []

    class FlakyChannel(InMemoryChannel):  # type: ignore[misc]
        failures_left = 2

        async def receive(self, max_messages: int, timeout: float) -> list[Any]:
            if self.failures_left:
                self.failures_left -= 1
                raise ConnectionError("broker unreachable")
            return await super().receive(max_messages, timeout)

    @asynchronous("work")
    @event_handler
    async def handle(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    work = FlakyChannel("work")
    app = App("shop", handlers=[handle], channels=[work])
    async with app:
        await app.events.publish(OrderPlaced("o-1", 1))
        consumer = app.consumer()
        running = asyncio.ensure_future(consumer.run())
        for _ in range(300):
            if handled:
                break
            await asyncio.sleep(0.01)
        consumer.stop("test")
        await running

    assert handled == ["o-1"]
    assert work.failures_left == 0
