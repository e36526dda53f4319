"""Pipelined publishing: a window of messages goes out at once, then their acks are awaited together.

Each message carries its own reply subject under one wildcard subscription, and JetStream answers
there once the message is stored (`{"stream": ..., "seq": ...}`), refused (`{"error": ...}`), or
when no stream listens on the subject (a `503` status).

While the connection is down a window keeps waiting: nats-py holds what it had not written yet and
sends it after reconnecting, and JetStream's acks for it then arrive as usual. A second after the
connection is back, whatever is still unanswered was lost with the old connection (or its ack was),
and the caller publishes it again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["Confirmations", "Outcome"]

_NO_RESPONDERS: Final = "503"


class Outcome:
    """What came back for the messages of one window, by index."""

    __slots__ = ("missing_stream", "refused", "stored", "unanswered")

    def __init__(self) -> None:
        self.stored: list[int] = []
        self.unanswered: list[int] = []
        self.missing_stream: list[int] = []
        #: (index, the server's description)
        self.refused: list[tuple[int, str]] = []


#: How long after a reconnect the acks of messages sent before it are still waited for.
_AFTER_RECONNECT: Final = 1.0
#: How often a window whose time is up checks whether the connection is back.
_WHILE_DISCONNECTED: Final = 0.5


class _Window:
    __slots__ = ("give_up", "reconnected", "remaining", "replies", "timer", "waiter")

    def __init__(self, size: int, waiter: asyncio.Future[None], give_up: float) -> None:
        self.remaining = size
        self.replies: dict[int, Msg] = {}
        self.waiter = waiter
        self.give_up = give_up
        self.timer: asyncio.TimerHandle | None = None
        #: Whether a reconnect happened while waiting: what nats-py held back has been sent since.
        self.reconnected = False

    def wake(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(None)


class Confirmations:
    """Publishes windows of messages and matches JetStream's acks to them."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._inbox = client.new_inbox() + "."
        self._ids = itertools.count()
        self._waiting: dict[str, tuple[_Window, int]] = {}
        self._windows: set[_Window] = set()

    async def start(self) -> None:
        await self._client.subscribe(self._inbox + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject, None)
        if entry is None:
            return
        window, index = entry
        window.replies[index] = msg
        window.remaining -= 1
        if window.remaining == 0:
            window.wake()

    def abandon(self) -> None:
        """Stop waiting for acks in flight (the channel is closing)."""
        for window in self._windows:
            window.wake()

    def reconnected(self) -> None:
        """Windows still waiting get a last second for acks of what nats-py sent after reconnecting."""
        for window in self._windows:
            window.reconnected = True
            self._arm(window, _AFTER_RECONNECT)

    def _arm(self, window: _Window, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        timer = window.timer
        if timer is not None:
            if timer.when() <= loop.time() + seconds:
                return  # never put off a window's end
            timer.cancel()
        window.timer = loop.call_later(seconds, self._time_up, window)

    def _time_up(self, window: _Window) -> None:
        window.timer = None
        if (
            self._client.is_connected
            or window.reconnected  # lost again: what is unanswered now did not make it
            or asyncio.get_running_loop().time() >= window.give_up
        ):
            window.wake()
        else:
            self._arm(window, _WHILE_DISCONNECTED)

    async def publish(
        self, subject: str, payloads: list[bytes], indexes: list[int], timeout: float, give_up: float
    ) -> Outcome:
        """Publish `payloads[i]` for every i in `indexes` and wait for their acks: up to `timeout`
        while connected, and while disconnected until the connection is back or the loop's clock
        reads `give_up`."""
        loop = asyncio.get_running_loop()
        window = _Window(len(indexes), loop.create_future(), give_up)
        waiting, ids, inbox, publish = self._waiting, self._ids, self._inbox, self._client.publish
        tokens = []
        self._windows.add(window)
        try:
            for index in indexes:
                token = f"{inbox}{next(ids)}"
                tokens.append(token)
                waiting[token] = (window, index)
                await publish(subject, payloads[index], reply=token)
            if window.remaining:
                self._arm(window, timeout)
                try:
                    await window.waiter
                finally:
                    if window.timer is not None:
                        window.timer.cancel()
        finally:
            self._windows.discard(window)
            for token in tokens:
                waiting.pop(token, None)
        return _outcome(indexes, window.replies)


def _outcome(indexes: list[int], replies: dict[int, Msg]) -> Outcome:
    outcome = Outcome()
    for index in indexes:
        reply = replies.get(index)
        if reply is None:
            outcome.unanswered.append(index)
        elif reply.headers is not None and reply.headers.get("Status") == _NO_RESPONDERS:
            outcome.missing_stream.append(index)
        elif b'"error":{' in reply.data:
            outcome.refused.append((index, _description(reply.data)))
        else:
            outcome.stored.append(index)
    return outcome


def _description(data: bytes) -> str:
    try:
        error = json.loads(data)["error"]
        return f"{error.get('description', error)} (code {error.get('err_code', error.get('code'))})"
    except (ValueError, KeyError, TypeError, AttributeError):
        return data.decode(errors="replace")
