"""Waking consumers that wait for messages, instead of polling tightly.

Within one process a send fires the channel's `Signal` directly. On PostgreSQL the sending statement
also runs `pg_notify`, delivered when its transaction commits, and one dedicated connection per database
LISTENs for the channels this process consumes, so consumers in other processes wake up too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import weakref
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from tidings.sql._driver import DriverLink, open_link

if TYPE_CHECKING:
    from tidings.sql import Database

__all__ = ["Signal", "Wakeups", "notify_channel", "wakeups_for"]

_log = logging.getLogger("tidings.channels.sql")

#: How long to wait before trying again to open a LISTEN connection that failed.
_RELISTEN_SECONDS = 5.0


def notify_channel(name: str) -> str:
    """The PostgreSQL notification channel of a tidings channel (identifiers stop at 63 bytes)."""
    candidate = f"tidings_{name}"
    if len(candidate.encode()) <= 63:
        return candidate
    return f"tidings_{hashlib.sha256(name.encode()).hexdigest()[:40]}"


class Signal:
    """Counts "something may have arrived" events; a waiter notes the count, then waits for a change.

    An event wakes one waiter, the one waiting longest: two receivers woken for one message would
    both claim, and the one that found nothing would then ask when the next message is due, three
    statements where one does. A receiver that claimed a whole batch fires again, since more may
    be waiting (see `SqlChannel.receive`), so a burst still wakes every receiver in turn.
    """

    __slots__ = ("_waiters", "version")

    def __init__(self) -> None:
        self.version = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def fire(self) -> None:
        self.version += 1
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # one that stopped waiting cancelled its future
                waiter.set_result(None)
                return

    def changed_since(self, version: int) -> asyncio.Future[None]:
        """A future done once the count moved past `version` (already done if it has); cancel it
        when no longer waiting, so that the next event goes to a waiter that is still there."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.version != version:
            waiter.set_result(None)
        else:
            self._waiters.append(waiter)
        return waiter


class Wakeups:
    """The signals of one database's channels in this process, and its PostgreSQL listener."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._signals: dict[str, Signal] = {}
        self._listened: Counter[str] = Counter()
        self._by_notify_channel: dict[str, str] = {}
        self._link: DriverLink | None = None
        self._retry_at = 0.0
        self._lock = asyncio.Lock()

    def signal(self, channel: str) -> Signal:
        signal = self._signals.get(channel)
        if signal is None:
            signal = self._signals[channel] = Signal()
        return signal

    @property
    def listening(self) -> bool:
        """True while notifications arrive (PostgreSQL with a live LISTEN connection)."""
        return self._alive()

    def _alive(self) -> bool:
        return self._link is not None and not self._link.driver.is_closed()

    async def listen(self, channel: str) -> None:
        """Start waking `channel`'s consumers on notifications (PostgreSQL only)."""
        if self._database.backend != "postgresql":
            return
        self._listened[channel] += 1
        if self._listened[channel] == 1:
            self._by_notify_channel[notify_channel(channel)] = channel
            # One LISTEN connection even when several channels connect at the same moment.
            async with self._lock:
                await self._add(channel)

    async def unlisten(self, channel: str) -> None:
        if self._listened[channel] <= 0:
            return
        self._listened[channel] -= 1
        if self._listened[channel] == 0:
            del self._listened[channel]
            self._by_notify_channel.pop(notify_channel(channel), None)
            if self._link is not None and self.listening:
                with contextlib.suppress(Exception):
                    await self._link.driver.remove_listener(notify_channel(channel), self._notified)
        if not self._listened:
            await self._disconnect()

    async def ensure_listening(self) -> None:
        """Reopen a LISTEN connection that dropped, at most every few seconds."""
        if not self._listened or self.listening:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return
        async with self._lock:
            if self._alive():
                return
            await self._disconnect()
            for channel in list(self._listened):
                await self._add(channel)

    def _notified(self, _connection: Any, _pid: int, pg_channel: str, _payload: str) -> None:
        channel = self._by_notify_channel.get(pg_channel)
        if channel is not None:
            self.signal(channel).fire()

    async def _add(self, channel: str) -> None:
        try:
            if self._link is None or not self.listening:
                await self._disconnect()
                # A connection of its own, outside any pool: it does nothing but LISTEN.
                self._link = await open_link(self._database)
            await self._link.driver.add_listener(notify_channel(channel), self._notified)
        except Exception as exc:
            # Consumers fall back to polling; the next wait tries again.
            _log.warning("cannot LISTEN on %s: %s", self._database.safe_url, exc)
            self._retry_at = asyncio.get_running_loop().time() + _RELISTEN_SECONDS
            await self._disconnect()
            return
        # Whatever was sent while nobody listened is found by the first claim; wake waiters to look.
        self.signal(channel).fire()

    async def _disconnect(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.discard()


_wakeups: weakref.WeakKeyDictionary[Database, Wakeups] = weakref.WeakKeyDictionary()


def wakeups_for(database: Database) -> Wakeups:
    """The one `Wakeups` of a database in this process."""
    found = _wakeups.get(database)
    if found is None:
        found = _wakeups[database] = Wakeups(database)
    return found
