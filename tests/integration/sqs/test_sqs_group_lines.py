"""FIFO batches holding several messages of one group (as AWS returns them): one goes out at a time.

fauxqs returns at most one message per group per call, so these tests script SQS's replies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("aiobotocore", reason="the 'sqs' extra is not installed")

from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.sqs import SqsChannel
from tidings.channels.sqs._codec import encode

from ._helpers import numbers


class ScriptedSqs:
    """Stands in for the channel's SQS calls: replies to receives from a script, records the rest."""

    def __init__(self, batches: list[list[tuple[int, str]]]) -> None:
        self.batches = batches
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, operation: str, **parameters: Any) -> Any:
        self.calls.append((operation, parameters))
        if operation != "receive_message":
            return {}
        if not self.batches:
            await asyncio.sleep(min(parameters["WaitTimeSeconds"], 0.05))
            return {}
        return {"Messages": [self.message(n, group) for n, group in self.batches.pop(0)]}

    @staticmethod
    def message(n: int, group: str) -> dict[str, Any]:
        body, attributes, _ = encode(Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}"}))
        return {
            "ReceiptHandle": f"r-{n}",
            "Body": body,
            "MessageAttributes": attributes,
            "Attributes": {"ApproximateReceiveCount": "1", "MessageGroupId": group},
        }

    def handles(self, operation: str, visibility: int | None = None) -> list[str]:
        return [
            entry["ReceiptHandle"]
            for name, parameters in self.calls
            if name == operation
            for entry in parameters["Entries"]
            if visibility is None or entry.get("VisibilityTimeout") == visibility
        ]


def scripted_channel(batches: list[list[tuple[int, str]]]) -> tuple[SqsChannel, ScriptedSqs]:
    channel = SqsChannel("orders", fifo=True)
    sqs = ScriptedSqs(batches)
    channel._client = object()
    channel._call = sqs  # type: ignore[method-assign]
    return channel, sqs


async def test_only_the_first_message_of_each_group_in_a_batch_goes_out() -> None:
    channel, _ = scripted_channel([[(1, "a"), (2, "a"), (3, "b"), (4, "a")]])

    assert numbers(await channel.receive(10, timeout=0.2)) == [1, 3]
    assert await channel.receive(10, timeout=0.2) == []


async def test_acking_a_groups_message_hands_out_the_next_of_that_group_at_once() -> None:
    channel, sqs = scripted_channel([[(1, "a"), (2, "a"), (3, "b"), (4, "a")]])
    first = await channel.receive(10, timeout=0.2)

    waiting = asyncio.ensure_future(channel.receive(10, timeout=5.0))
    await asyncio.sleep(0.1)
    await channel.ack(first[:1])
    second = await asyncio.wait_for(waiting, timeout=1.0)
    await channel.ack(second)

    assert numbers(second) == [2]
    assert numbers(await channel.receive(10, timeout=0.2)) == [4]
    assert sqs.handles("delete_message_batch") == ["r-1", "r-2"]


async def test_nacking_a_groups_message_gives_the_rest_of_its_group_back_to_sqs() -> None:
    channel, sqs = scripted_channel([[(1, "a"), (2, "a"), (4, "a"), (3, "b")]])
    first = await channel.receive(10, timeout=0.2)

    await channel.nack(first[:1], delay=5.0)

    assert sqs.handles("change_message_visibility_batch", 5) == ["r-1"]
    assert sqs.handles("change_message_visibility_batch", 0) == ["r-2", "r-4"]
    assert await channel.receive(10, timeout=0.2) == []


async def test_extending_a_groups_message_extends_the_messages_waiting_behind_it() -> None:
    channel, sqs = scripted_channel([[(1, "a"), (2, "a"), (3, "b")]])
    first = await channel.receive(10, timeout=0.2)

    await channel.extend_lease(first[:1], 30.0)

    assert sqs.handles("change_message_visibility_batch", 30) == ["r-1", "r-2"]


async def test_closing_gives_back_the_messages_waiting_in_group_lines() -> None:
    channel, sqs = scripted_channel([[(1, "a"), (2, "a"), (3, "a")]])
    await channel.receive(10, timeout=0.2)
    channel._stack = None

    await channel.close()

    assert sqs.handles("change_message_visibility_batch", 0) == ["r-2", "r-3"]
