"""Pull requests to the channel's consumer, and the deliveries they bring back.

Every request gets its own reply subject under one wildcard subscription, so the status that ends a
request (`404 No Messages`, `408 Request Timeout`, `409 ...`) is matched to it; deliveries carry the
message's own subject, so they all land in one buffer. The channel serialises its receives, so one
request at a time is waited on.

A request can outlive the receive that sent it (the receive was cancelled, or a reconnect cut it
off while the server still held it). What such a request brings arrives while nobody collects: it is
given straight back with a plain nak, so it is not left leased to nobody until `ack_wait` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["Pulls"]

log = logging.getLogger("tidings.channels.nats")

#: How much longer than its expiry a request is waited for before it counts as unanswered.
_GRACE: Final = 1.0
_HEARTBEAT: Final = "100"
_CONFLICT: Final = "409"
NAK: Final = b"-NAK"


class _Request:
    __slots__ = ("finished", "status")

    def __init__(self) -> None:
        self.finished = False
        self.status = ""


class Pulls:
    """Sends pull requests and collects their deliveries into `arrived`."""

    def __init__(self, client: Client, next_subject: str, on_conflict: Callable[[str], None]) -> None:
        self._client = client
        self._next_subject = next_subject
        self._on_conflict = on_conflict
        self._inbox = client.new_inbox()
        self._ids = itertools.count()
        self._requests: dict[str, _Request] = {}
        self._received = 0
        self._waiter: asyncio.Future[None] | None = None
        #: Deliveries not yet taken by a receive.
        self.arrived: deque[Msg] = deque()
        #: Whether a receive is collecting deliveries right now.
        self.collecting = False
        self.closed = False

    async def start(self) -> None:
        await self._client.subscribe(self._inbox + ".*", cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        if headers is None or "Status" not in headers:
            if self.collecting:
                self.arrived.append(msg)
                self._received += 1
                self._wake()
            else:
                with contextlib.suppress(Exception):
                    await self._client.publish(msg.reply, NAK)
            return
        status = headers["Status"]
        if status == _HEARTBEAT:
            return
        request = self._requests.get(msg.subject)
        if request is not None:
            request.finished = True
            request.status = status
            self._wake()
        if status == _CONFLICT:
            self._on_conflict(str(headers.get("Description", "")))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abandon(self) -> None:
        """Stop waiting for every request in flight (the connection that carried them is gone)."""
        for request in self._requests.values():
            request.finished = True
        self._wake()

    def close(self) -> None:
        self.closed = True
        self.abandon()

    async def pull(self, batch: int, expires: float | None) -> bool:
        """Ask for up to `batch` deliveries and wait until the request is over.

        Without `expires` the server answers at once with what it has (`no_wait`); with it, the
        request waits on the server up to `expires` seconds. Returns False when the server did not
        answer at all (no consumer behind the subject).
        """
        if expires is None:
            body = b'{"batch":%d,"no_wait":true}' % batch
            patience = _GRACE
        else:
            body = b'{"batch":%d,"expires":%d}' % (batch, int(expires * 1e9))
            patience = expires + _GRACE
        loop = asyncio.get_running_loop()
        give_up = loop.time() + patience
        reply = f"{self._inbox}.{next(self._ids)}"
        request = self._requests[reply] = _Request()
        start = self._received
        try:
            await self._client.publish(self._next_subject, body, reply=reply)
            while not request.finished and self._received - start < batch and not self.closed:
                remaining = give_up - loop.time()
                if remaining <= 0:
                    return False
                await self._wait(loop, remaining)
            return True
        finally:
            del self._requests[reply]

    async def _wait(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
