"""Wake-ups for receivers waiting on an empty channel, across processes, without polling.

Every script that makes messages ready publishes on the channel's wake-up topic. One subscription
per channel object turns those publications into an asyncio notification for all its waiting
receivers. A counter lets a receiver notice a wake-up that arrived while it was still claiming, so
none is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tidings._clock import Clock

__all__ = ["Wakeups"]

_log = logging.getLogger("tidings.channels.redis")

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class Wakeups:
    """A subscription to one wake-up topic, kept alive across connection losses."""

    def __init__(self, client: Redis, topic: str, clock: Clock) -> None:
        self._client = client
        self._topic = topic
        self._clock = clock
        #: Receivers waiting for the next wake-up; plain futures, so that a wake-up resumes them directly.
        self._waiting: list[asyncio.Future[None]] = []
        self._subscribed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        #: Grows with every wake-up, and with every resubscription (anything may have changed).
        self.version = 0

    async def subscribed(self, timeout: float) -> bool:
        """Start listening if needed; True once the subscription is confirmed by the server."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name=f"tidings-wakeup:{self._topic}")
        if self._subscribed.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        return self._subscribed.is_set()

    async def wait(self, timeout: float, due_in: float | None) -> None:
        """Wait for a wake-up, for `due_in` seconds on the clock to pass, or `timeout` seconds."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        self._waiting.append(woken)
        timer = loop.call_later(timeout, _resolve, woken)
        # The app's clock decides when something is due (a test clock may move faster).
        due = None if due_in is None else asyncio.ensure_future(self._clock.sleep(due_in))
        if due is not None:
            due.add_done_callback(lambda _: _resolve(woken))
        try:
            await woken
        finally:
            timer.cancel()
            if due is not None:
                due.cancel()
            if woken in self._waiting:  # not woken by a publication (a timer, or cancelled)
                self._waiting.remove(woken)

    def _notify(self) -> None:
        self.version += 1
        waiting, self._waiting = self._waiting, []
        for woken in waiting:
            _resolve(woken)

    async def _listen(self) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._topic)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._subscribed.set()
                        backoff = _FIRST_BACKOFF
                    # A confirmed (re)subscription counts as a wake-up too: messages may have
                    # arrived while the subscription was down.
                    self._notify()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self._subscribed.clear()
            except Exception:
                # Not worth dying for: receivers still claim at least every few seconds.
                self._subscribed.clear()
                _log.exception("wake-up subscription to %s failed; subscribing again", self._topic)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._subscribed.clear()
        self._notify()  # receivers still waiting find the channel closed


def _resolve(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
