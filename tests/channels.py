"""Opening connected channels for a test and closing them after it, as the per-broker
`open_channel` fixtures do."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from tidings._clock import Clock, SystemClock
from tidings.channels.base import Channel, ChannelEnvironment

Opened = TypeVar("Opened", bound=Channel)


@contextlib.asynccontextmanager
async def opening_channels(
    make: Callable[..., Opened], app_name: str
) -> AsyncIterator[Callable[..., Awaitable[Opened]]]:
    """`open_channel(*args, clock=None, **options)`: `make(*args, **options)`, connected with `clock`
    (the system clock if None); every channel opened so is closed on leaving."""
    opened: list[Opened] = []

    async def open_channel(*args: Any, clock: Clock | None = None, **options: Any) -> Opened:
        channel = make(*args, **options)
        await channel.connect(ChannelEnvironment(app_name=app_name, clock=clock or SystemClock()))
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()
