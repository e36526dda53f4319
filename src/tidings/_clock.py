"""Time, injectable so that delays, TTLs and retries can be tested without waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Tells the time in seconds since the epoch and lets waiters know when it moves."""

    def now(self) -> float:
        """The current time in seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until `seconds` have passed on this clock."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))


class ManualClock:
    """A clock that only moves when told to; for tests of delays, TTLs and backoff."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self._now = start
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake everything waiting on it."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards; pass a positive number of seconds")
        self._now += seconds
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + seconds
        while self._now < deadline:
            await self._moved.wait()

    async def wait_moved(self) -> None:
        """Wait until the clock is next advanced."""
        await self._moved.wait()
