"""Pipelined publishing: a window of messages goes out at once, then their acks are awaited together.

Each message carries its own reply subject under one wildcard subscription, and JetStream answers
there once the message is stored (`{"stream": ..., "seq": ...}`), refused (`{"error": ...}`), or
when no stream listens on the subject (a `503` status).
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


class _Window:
    __slots__ = ("remaining", "replies", "waiter")

    def __init__(self, size: int, waiter: asyncio.Future[None]) -> None:
        self.remaining = size
        self.replies: dict[int, Msg] = {}
        self.waiter = waiter

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
        """Stop waiting for acks in flight (the connection that would carry them is gone)."""
        for window in self._windows:
            window.wake()

    async def publish(
        self, subject: str, payloads: list[bytes], indexes: list[int], timeout: float
    ) -> Outcome:
        """Publish `payloads[i]` for every i in `indexes` and wait up to `timeout` for their acks."""
        loop = asyncio.get_running_loop()
        window = _Window(len(indexes), loop.create_future())
        waiting, ids, inbox, publish = self._waiting, self._ids, self._inbox, self._client.publish
        tokens = []
        self._windows.add(window)
        try:
            for index in indexes:
                token = f"{inbox}{next(ids)}"
                tokens.append(token)
                waiting[token] = (window, index)
                await publish(subject, payloads[index], reply=token)
            timer = loop.call_later(timeout, window.wake)
            try:
                await window.waiter
            finally:
                timer.cancel()
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
