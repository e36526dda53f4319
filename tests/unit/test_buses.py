from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import pytest

from tidings import (
    App,
    CommandBus,
    ConfigurationError,
    EventBus,
    HandlerNotFound,
    Header,
    Headers,
    InMemoryChannel,
    MessageContext,
    QueryBus,
    asynchronous,
    command_handler,
    event_handler,
    named,
    query_handler,
)
from tidings import headers as h


@dataclass
class PlaceOrder:
    order_id: str
    total: int


@dataclass
class OrderPlaced:
    order_id: str
    total: int


@dataclass
class CountOrders:
    pass


@named("payment.received")
@dataclass
class PaymentReceived:
    order_id: str


class Animal:
    pass


class Mailer:
    pass


class Dog(Animal):
    pass


async def test_a_command_returns_what_its_handler_returned() -> None:
    @command_handler
    async def place_order(command: PlaceOrder) -> str:
        return f"placed {command.order_id}"

    async with App("shop", handlers=[place_order]) as app:
        assert await app.commands.send(PlaceOrder("o-1", 10)) == "placed o-1"


async def test_a_plain_def_handler_runs_and_returns_its_value() -> None:
    @command_handler
    def place_order(command: PlaceOrder) -> int:
        return command.total * 2

    async with App("shop", handlers=[place_order]) as app:
        assert await app.commands.send(PlaceOrder("o-1", 21)) == 42


async def test_an_unknown_command_raises_an_error_naming_the_message_type() -> None:
    async with App("shop") as app:
        with pytest.raises(HandlerNotFound, match="PlaceOrder"):
            await app.commands.send(PlaceOrder("o-1", 10))


async def test_a_sync_handlers_exception_reaches_the_sender() -> None:
    @command_handler
    async def place_order(command: PlaceOrder) -> None:
        raise RuntimeError("out of stock")

    async with App("shop", handlers=[place_order]) as app:
        with pytest.raises(RuntimeError, match="out of stock"):
            await app.commands.send(PlaceOrder("o-1", 10))


async def test_an_event_reaches_every_subscriber_and_no_subscriber_is_fine() -> None:
    seen: list[str] = []

    @event_handler
    async def first(event: OrderPlaced) -> None:
        seen.append("first")

    @event_handler
    def second(event: OrderPlaced) -> None:
        seen.append("second")

    async with App("shop", handlers=[first, second]) as app:
        await app.events.publish(OrderPlaced("o-1", 10))
        await app.events.publish(PaymentReceived("o-1"))

    assert seen == ["first", "second"]


async def test_a_query_returns_its_answer() -> None:
    @query_handler
    async def count(query: CountOrders) -> int:
        return 3

    async with App("shop", handlers=[count]) as app:
        assert await app.queries.ask(CountOrders()) == 3


async def test_handlers_route_by_base_class_union_and_name_with_wildcards() -> None:
    seen: list[str] = []

    @event_handler
    async def any_animal(event: Animal) -> None:
        seen.append(f"animal:{type(event).__name__}")

    @event_handler
    async def either(event: OrderPlaced | PaymentReceived) -> None:
        seen.append(f"either:{type(event).__name__}")

    @event_handler("payment.*")
    async def payments(event: dict[str, Any]) -> None:
        seen.append(f"payments:{event['order_id']}")

    async with App("shop", handlers=[any_animal, either, payments]) as app:
        await app.events.publish(Dog())
        await app.events.publish(OrderPlaced("o-1", 1))
        await app.events.publish(PaymentReceived("o-2"))
        await app.events.publish({"order_id": "o-3"}, name="payment.received")

    assert seen == [
        "animal:Dog",
        "either:OrderPlaced",
        "either:PaymentReceived",
        "payments:o-2",
        "either:PaymentReceived",
        "payments:o-3",
    ]


async def test_a_command_sent_by_name_as_a_mapping_is_decoded_into_the_handlers_type() -> None:
    @command_handler("order.place")
    async def place_order(command: PlaceOrder) -> int:
        return command.total

    async with App("shop", handlers=[place_order]) as app:
        assert await app.commands.send({"order_id": "o-1", "total": 7}, name="order.place") == 7


async def test_handlers_get_buses_headers_one_header_context_and_services_injected() -> None:
    got: dict[str, Any] = {}

    @command_handler
    async def place_order(
        command: PlaceOrder,
        commands: CommandBus,
        events: EventBus,
        queries: QueryBus,
        headers: Headers,
        tenant: Annotated[str, Header("tenant")],
        missing: Annotated[str | None, Header("nope")],
        context: MessageContext,
        mailer: Mailer,
    ) -> None:
        got.update(
            buses=(commands, events, queries),
            tenant=tenant,
            missing=missing,
            header=headers["tenant"],
            endpoint=context.endpoint_id,
            mailer=mailer,
        )

    mailer = Mailer()
    async with App("shop", handlers=[place_order], services={Mailer: mailer}) as app:
        await app.commands.send(PlaceOrder("o-1", 1), headers={"tenant": "acme"})

    assert got["buses"] == (app.commands, app.events, app.queries)
    assert (got["tenant"], got["missing"], got["header"]) == ("acme", None, "acme")
    assert got["endpoint"] == "place_order"
    assert got["mailer"] is mailer


async def test_user_headers_correlation_and_causation_propagate_to_messages_sent_while_handling() -> None:
    seen: dict[str, Headers] = {}

    @command_handler
    async def place_order(command: PlaceOrder, events: EventBus, headers: Headers) -> None:
        seen["command"] = dict(headers)
        await events.publish(OrderPlaced(command.order_id, command.total), headers={"extra": "1"})

    @event_handler
    async def on_placed(event: OrderPlaced, headers: Headers) -> None:
        seen["event"] = dict(headers)

    async with App("shop", handlers=[place_order, on_placed]) as app:
        await app.commands.send(PlaceOrder("o-1", 1), headers={"tenant": "acme"})

    command, event = seen["command"], seen["event"]
    assert event["tenant"] == "acme"
    assert event["extra"] == "1"
    assert event[h.CORRELATION_ID] == command[h.MESSAGE_ID] == command[h.CORRELATION_ID]
    assert event[h.CAUSATION_ID] == command[h.MESSAGE_ID]
    assert event[h.MESSAGE_ID] != command[h.MESSAGE_ID]
    assert event[h.MESSAGE_NAME] == "OrderPlaced"
    assert len(command[h.MESSAGE_ID]) == 36
    assert command[h.MESSAGE_ID][14] == "7"  # UUIDv7


def test_two_handlers_for_one_command_fail_start_up_naming_both() -> None:
    @command_handler
    async def one(command: PlaceOrder) -> None: ...

    @command_handler
    async def two(command: PlaceOrder) -> None: ...

    with pytest.raises(ConfigurationError, match=r"PlaceOrder has two handlers.*one.*two"):
        App("shop", handlers=[one, two])


def test_an_endpoint_id_used_twice_fails_start_up_naming_both_handlers() -> None:
    @event_handler(endpoint_id="notify")
    async def one(event: OrderPlaced) -> None: ...

    @event_handler(endpoint_id="notify")
    async def two(event: OrderPlaced) -> None: ...

    with pytest.raises(ConfigurationError, match=r"'notify' is used by both .*one and .*two"):
        App("shop", handlers=[one, two])


def test_a_handler_without_a_message_parameter_fails_start_up() -> None:
    @event_handler
    async def nothing() -> None: ...

    with pytest.raises(ConfigurationError, match="no parameter for the message"):
        App("shop", handlers=[nothing])


def test_a_handler_with_an_unannotated_message_and_no_name_fails_start_up() -> None:
    @event_handler
    async def untyped(event) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(ConfigurationError, match="annotate its first parameter 'event'"):
        App("shop", handlers=[untyped])


def test_an_unresolvable_parameter_fails_start_up_saying_how_to_provide_it() -> None:
    @event_handler
    async def notify(event: OrderPlaced, mailer: Mailer) -> None: ...

    with pytest.raises(ConfigurationError, match=r"'mailer'.*App\(services="):
        App("shop", handlers=[notify])


def test_an_unknown_channel_fails_start_up_naming_handler_and_channel() -> None:
    @asynchronous("nowhere")
    @event_handler
    async def notify(event: OrderPlaced) -> None: ...

    with pytest.raises(ConfigurationError, match=r"notify.*'nowhere'.*App\(channels="):
        App("shop", handlers=[notify], channels=[InMemoryChannel("somewhere")])


def test_an_asynchronous_query_handler_fails_start_up() -> None:
    @asynchronous("work")
    @query_handler
    async def count(query: CountOrders) -> int:
        return 1

    with pytest.raises(ConfigurationError, match="queries are answered inline"):
        App("shop", handlers=[count], channels=[InMemoryChannel("work")])


class OrderService:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @command_handler
    async def place(self, command: PlaceOrder) -> str:
        return f"{self.prefix}{command.order_id}"

    @event_handler
    async def placed(self, event: OrderPlaced) -> None: ...


async def test_handler_methods_of_instances_and_of_classes_built_with_services_are_collected() -> None:
    instance_app = App("shop", handlers=[OrderService("i-")])
    class_app = App("shop", handlers=[OrderService], services={str: "c-"})

    assert set(instance_app.endpoints) == {"OrderService.place", "OrderService.placed"}
    async with instance_app, class_app:
        assert await instance_app.commands.send(PlaceOrder("1", 1)) == "i-1"
        assert await class_app.commands.send(PlaceOrder("1", 1)) == "c-1"


async def test_a_module_is_scanned_for_handler_functions_and_classes() -> None:
    from tests.unit import handlers_module

    app = App("shop", handlers=[handlers_module])

    assert set(app.endpoints) == {"double", "Counter.count"}
    async with app:
        assert await app.commands.send(handlers_module.Double(4)) == 8


def test_decorators_can_be_stacked_in_any_order() -> None:
    from datetime import timedelta

    from tidings import delayed, priority

    @event_handler
    @priority(3)
    @asynchronous("work")
    @delayed(timedelta(seconds=5))
    async def one(event: OrderPlaced) -> None: ...

    @delayed(timedelta(seconds=5))
    @asynchronous("work")
    @priority(3)
    @event_handler
    async def two(event: OrderPlaced) -> None: ...

    app = App("shop", handlers=[one, two], channels=[InMemoryChannel("work")])

    for endpoint in app.endpoints.values():
        assert (endpoint.channels, endpoint.priority, endpoint.delay) == (
            ("work",),
            3,
            timedelta(seconds=5),
        )
