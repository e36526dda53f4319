"""The SQS channel in the corners the shared conformance suite does not reach."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.sqs import SqsChannel

from ._helpers import message, number, numbers, receive_all, receive_for
from .conftest import OpenChannel

pytestmark = pytest.mark.sqs


async def test_a_batch_larger_than_ten_goes_out_in_one_send_and_comes_back_in_one_receive(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    await channel.send([message(n) for n in range(35)])

    received = await channel.receive(35, timeout=2.0)

    assert sorted(numbers(received)) == list(range(35))
    await channel.ack(received)
    assert await channel.depth() == 0


async def test_large_messages_are_split_into_batches_that_sqs_accepts(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    big = "x" * 100_000
    await channel.send([Envelope(f'{{"n": {n}, "pad": "{big}"}}'.encode(), {"i": str(n)}) for n in range(6)])

    received = await receive_all(channel, 6)

    assert sorted(d.envelope.headers["i"] for d in received) == [str(n) for n in range(6)]
    await channel.ack(received)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\xff binary \x80",
        b"",
        "h\u00e9llo \u2713 \U0001f389".encode(),
        b"tab\tand\nnewline\r",
        b"\x1b[31mescape",
        b"\xef\xbf\xbe",  # U+FFFE: valid UTF-8, refused by SQS as text
    ],
    ids=["binary", "empty", "unicode", "whitespace", "control", "non-character"],
)
async def test_any_body_and_headers_come_back_byte_for_byte(open_channel: OpenChannel, body: bytes) -> None:
    channel = await open_channel()
    headers = {
        h.MESSAGE_ID: "m-1",
        "tenant": "acm\u00e9 \"quoted\" 'x'",
        "empty": "",
        "n": "1" * 300,
        "party": "\U0001f389 \ufffe \x00",
    }
    await channel.send([Envelope(body, headers)])

    received = await receive_all(channel, 1)

    assert received[0].envelope.body == body
    assert received[0].envelope.headers == headers
    await channel.ack(received)


async def test_a_message_from_another_sqs_producer_arrives_with_its_body_and_no_headers(
    open_channel: OpenChannel, raw_client: Any
) -> None:
    channel = await open_channel()
    await raw_client.send_message(QueueUrl=channel._queue_url, MessageBody='{"plain": true}')

    received = await receive_all(channel, 1)

    assert received[0].envelope.body == b'{"plain": true}'
    assert received[0].envelope.headers == {}
    await channel.ack(received)


async def test_headers_are_carried_in_one_message_attribute(
    open_channel: OpenChannel, raw_client: Any
) -> None:
    channel = await open_channel()
    await channel.send([message(1, **{f"h{n}": str(n) for n in range(20)})])

    reply = await raw_client.receive_message(
        QueueUrl=channel._queue_url, MessageAttributeNames=["All"], WaitTimeSeconds=1
    )

    assert reply["Messages"][0]["Body"] == '{"n": 1}'
    assert set(reply["Messages"][0]["MessageAttributes"]) == {"tidings.headers"}


async def test_the_delivery_count_grows_with_each_redelivery(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    await channel.send([message(1)])
    counts = []
    for _ in range(3):
        received = await receive_all(channel, 1)
        counts.append(received[0].delivery_count)
        await channel.nack(received)

    assert counts == [1, 2, 3]


async def test_a_receive_that_times_out_leaves_its_long_poll_to_the_next_receive(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    assert await channel.receive(10, timeout=0.2) == []

    await channel.send([message(1)])
    started = time.monotonic()
    received = await channel.receive(10, timeout=3.0)

    assert numbers(received) == [1]
    assert time.monotonic() - started < 0.5
    assert received[0].delivery_count == 1
    await channel.ack(received)


async def test_what_a_cancelled_receive_brings_in_is_given_back_on_close(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    other = await open_channel()
    waiting = asyncio.ensure_future(channel.receive(10, timeout=5.0))
    await asyncio.sleep(0.3)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)

    await channel.send([message(1)])
    await asyncio.sleep(0.5)  # the abandoned long poll has it now
    await channel.close()
    started = time.monotonic()
    received = await receive_all(other, 1, timeout=5.0)

    assert numbers(received) == [1]
    assert time.monotonic() - started < 1.5  # given back, not waiting out its 30 s lease
    await other.ack(received)


async def test_closing_ends_a_waiting_receive(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    waiting = asyncio.ensure_future(channel.receive(10, timeout=20.0))
    await asyncio.sleep(0.3)
    started = time.monotonic()

    await channel.close()

    assert await waiting == []
    assert time.monotonic() - started < 3.0


async def test_a_nack_delay_past_the_visibility_cap_sends_the_message_anew_with_its_due_time(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel()
    await channel.send([message(1)])
    received = await receive_all(channel, 1)
    received[0].receipt.received_at -= 12 * 3600  # as if its handler had run for 12 hours

    nacked = time.time()
    await channel.nack(received, delay=1.5)
    again = await receive_all(channel, 1, timeout=5.0)

    assert numbers(again) == [1]
    assert time.time() - nacked >= 1.5
    assert float(again[0].envelope.headers[h.DELIVER_AT]) >= nacked + 1.5
    assert again[0].delivery_count == 1
    await channel.ack(again)
    assert await channel.depth() == 0


async def test_acking_a_delivery_whose_lease_ran_out_and_was_redelivered_raises_nothing(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(lease_seconds=1.0)
    await channel.send([message(1)])
    first = await receive_all(channel, 1)
    second = await receive_all(channel, 1, timeout=5.0)

    await channel.ack(first)
    await channel.ack(second)

    assert [number(d) for d in first + second] == [1, 1]
    assert await channel.depth() == 0


async def test_purge_falls_back_to_deleting_while_another_purge_is_in_progress(
    open_channel: OpenChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    channel = await open_channel()
    await channel.send([message(n) for n in range(25)])
    call = channel._call

    async def purge_in_progress(operation: str, **parameters: Any) -> Any:
        if operation == "purge_queue":
            raise ClientError(
                {"Error": {"Code": "AWS.SimpleQueueService.PurgeQueueInProgress"}}, "PurgeQueue"
            )
        return await call(operation, **parameters)

    monkeypatch.setattr(channel, "_call", purge_in_progress)
    await channel.purge()

    assert await channel.depth() == 0


async def test_channels_with_dots_in_their_names_get_valid_queue_names(open_channel: OpenChannel) -> None:
    channel = await open_channel(f"{uuid_prefix()}.orders.v2")
    await channel.send([message(1)])

    assert channel.queue_name.endswith("-orders-v2")
    assert numbers(await receive_all(channel, 1)) == [1]


def uuid_prefix() -> str:
    import uuid

    return f"it-{uuid.uuid4().hex[:12]}"


def test_invalid_settings_are_refused_when_the_channel_is_made() -> None:
    with pytest.raises(ValueError, match="max_hop_delay"):
        SqsChannel("orders", max_hop_delay=901)
    with pytest.raises(ValueError, match="max_hop_delay"):
        SqsChannel("orders", max_hop_delay=0)
    with pytest.raises(ValueError, match=r"\.fifo"):
        SqsChannel("orders", fifo=True, queue_name="orders")
    with pytest.raises(ValueError, match="not valid"):
        SqsChannel("o" * 81)


def test_the_channel_says_it_cannot_order_by_priority() -> None:
    assert SqsChannel("orders").capabilities.priority is False
    assert SqsChannel("orders").capabilities.ordered is False
    assert SqsChannel("orders", fifo=True).capabilities.ordered is True
    assert SqsChannel("orders", fifo=True).queue_name == "orders.fifo"


async def test_receiving_for_a_while_on_an_empty_queue_makes_no_busy_loop(open_channel: OpenChannel) -> None:
    channel = await open_channel()
    calls = 0
    call = channel._call

    async def counting(operation: str, **parameters: Any) -> Any:
        nonlocal calls
        calls += 1
        return await call(operation, **parameters)

    channel._call = counting  # type: ignore[method-assign]
    assert await receive_for(channel, 3.0) == []

    assert calls <= 5
