"""Delays on SQS: whole-second `DelaySeconds`, the fraction held by the channel, and re-delay hops
past the hop limit (SQS's cap is 15 minutes), proven with shortened hop limits and a manual clock."""

from __future__ import annotations

import logging
import time

import pytest

from tidings._clock import ManualClock

from ._helpers import due_at, message, numbers, receive_all, receive_for
from .conftest import OpenChannel

pytestmark = pytest.mark.sqs

HOP_LOG = "took another delay hop"


def hops(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        int(record.getMessage().split()[0]) for record in caplog.records if HOP_LOG in record.getMessage()
    )


async def test_a_20_minute_delay_is_delivered_after_20_minutes_with_hop_limits_scaled_down(
    open_channel: OpenChannel, caplog: pytest.LogCaptureFixture
) -> None:
    # One minute of the real case is 0.6 s here: SQS's 15-minute cap per hop becomes 9 s and the
    # 20-minute delay 12 s. The first hop ends 3 s ("5 minutes") early, so the message is sent again.
    caplog.set_level(logging.DEBUG, logger="tidings.channels.sqs")
    channel = await open_channel(max_hop_delay=9)
    sent = time.time()
    await channel.send([message(1, **due_at(sent + 12.0))])

    early = await receive_for(channel, 11.8)
    received = await receive_all(channel, 1, timeout=5.0)
    arrived = time.time() - sent

    assert early == []
    assert numbers(received) == [1]
    assert 12.0 <= arrived <= 12.6
    assert hops(caplog) == 1
    await channel.ack(received)


async def test_a_delay_of_several_hops_arrives_on_time_and_never_early(
    open_channel: OpenChannel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tidings.channels.sqs")
    channel = await open_channel(max_hop_delay=1)
    sent = time.time()
    await channel.send([message(1, **due_at(sent + 5.5))])

    early = await receive_for(channel, 5.3)
    received = await receive_all(channel, 1, timeout=5.0)
    arrived = time.time() - sent

    assert early == []
    assert numbers(received) == [1]
    assert 5.5 <= arrived <= 6.0
    assert hops(caplog) >= 3
    assert received[0].delivery_count == 1  # each hop is a new SQS message
    await channel.ack(received)
    assert await channel.depth() == 0


async def test_a_20_minute_delay_is_delivered_after_20_minutes_on_a_controlled_clock(
    open_channel: OpenChannel, caplog: pytest.LogCaptureFixture
) -> None:
    # SQS counts DelaySeconds in real time, so hops are 1 real second; the channel decides whether
    # a received message is due by the app's clock, which only the test moves.
    caplog.set_level(logging.DEBUG, logger="tidings.channels.sqs")
    clock = ManualClock()
    channel = await open_channel(clock=clock, max_hop_delay=1)
    await channel.send([message(1, **due_at(clock.now() + 20 * 60))])

    assert await receive_for(channel, 3.0) == []
    assert hops(caplog) >= 2
    clock.advance(19 * 60 + 59)
    assert await receive_for(channel, 2.0) == []  # a second early: held, not handed out
    clock.advance(1)
    moved = time.monotonic()
    received = await receive_all(channel, 1, timeout=5.0)

    assert numbers(received) == [1]
    assert time.monotonic() - moved < 2.5
    await channel.ack(received)


@pytest.mark.parametrize("seconds", [0.4, 1.5, 2.7])
async def test_a_delay_with_a_fraction_of_a_second_arrives_within_half_a_second_of_due(
    open_channel: OpenChannel, seconds: float
) -> None:
    channel = await open_channel()
    sent = time.time()
    await channel.send([message(1, **due_at(sent + seconds))])

    received = await receive_all(channel, 1, timeout=seconds + 5.0)
    arrived = time.time() - sent

    assert numbers(received) == [1]
    assert seconds <= arrived <= seconds + 0.5
    await channel.ack(received)


async def test_a_held_message_is_handed_out_with_a_full_lease(open_channel: OpenChannel) -> None:
    # Due 1.5 s after it becomes visible: the channel holds it, and its lease starts when due.
    channel = await open_channel(lease_seconds=2.0)
    other = await open_channel(lease_seconds=2.0)
    await channel.send([message(1, **due_at(time.time() + 1.5))])
    received = await receive_all(channel, 1, timeout=5.0)

    assert numbers(received) == [1]
    assert await receive_for(other, 1.6) == []  # still leased 1.6 s after it was handed out
    await channel.ack(received)


async def test_messages_due_now_are_not_held_back_by_delayed_ones_in_the_same_receive(
    open_channel: OpenChannel,
) -> None:
    channel = await open_channel(max_hop_delay=1)
    now = time.time()
    await channel.send([message(1, **due_at(now + 30)), message(2), message(3, **due_at(now + 0.3))])

    received = await receive_all(channel, 2, timeout=3.0)

    assert sorted(numbers(received)) == [2, 3]
    await channel.ack(received)
