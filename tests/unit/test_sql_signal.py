"""The in-process wake-up of SQL channel receivers: one event, one receiver."""

from __future__ import annotations

import asyncio

from tidings.channels.sql._wakeup import Signal


async def test_an_event_wakes_the_receiver_waiting_longest_and_leaves_the_others_waiting() -> None:
    signal = Signal()
    first, second = signal.changed_since(0), signal.changed_since(0)

    signal.fire()
    await asyncio.sleep(0)

    assert first.done()
    assert not second.done()
    signal.fire()
    assert second.done()


async def test_a_receiver_that_stopped_waiting_does_not_swallow_the_next_event() -> None:
    signal = Signal()
    gone, waiting = signal.changed_since(0), signal.changed_since(0)
    gone.cancel()

    signal.fire()

    assert waiting.done()
    assert not waiting.cancelled()


async def test_a_receiver_that_noted_an_older_count_does_not_wait_at_all() -> None:
    signal = Signal()
    seen = signal.version
    signal.fire()  # while the receiver was claiming

    assert signal.changed_since(seen).done()
