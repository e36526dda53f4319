"""Small helpers shared by the SQS integration tests."""

from __future__ import annotations

import time

from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.base import Channel, Delivery


def message(n: int, **headers: str) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", h.ENDPOINT: "ep", **headers})


def due_at(when: float) -> dict[str, str]:
    return {h.DELIVER_AT: repr(when)}


def number(delivery: Delivery) -> int:
    return int(delivery.envelope.body.decode().split(":")[1].rstrip("}"))


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [number(delivery) for delivery in deliveries]


async def receive_all(channel: Channel, count: int, timeout: float = 10.0) -> list[Delivery]:
    """Receive until `count` deliveries arrived or `timeout` passed."""
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(deliveries) < count and time.monotonic() < deadline:
        deliveries += await channel.receive(count - len(deliveries), timeout=0.5)
    return deliveries


async def receive_for(channel: Channel, seconds: float) -> list[Delivery]:
    """Everything received while receiving for `seconds`, as a running consumer would."""
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        deliveries += await channel.receive(10, timeout=min(0.5, remaining))
    return deliveries
