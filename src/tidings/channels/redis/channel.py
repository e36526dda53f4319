"""A queue channel on Redis: priority lanes, a sorted set for delays, leases with crash recovery.

How messages move (see `_scripts` for the key layout and `_codec` for how a message is stored):

- `send` stores each message in the `bodies` hash under a short *member* naming it, and
  appends the member to the list of its priority (its *lane*), or, when it is not due yet, adds it
  to the `delayed` sorted set scored by its due time: one script call per batch.
- `receive` runs one script that first moves due delayed messages and expired leases to their
  lanes, then pops up to `max_messages` from the lanes, highest priority first, and records each in
  the `leases` sorted set scored by its lease expiry. The batch is one atomic round trip, so any
  number of consumers never share a lease and never lose a message between them.
- `ack` removes the batch from `leases` and its entries from `bodies`; `nack` moves it back to its
  lanes or to the delayed set; `extend_lease` rescores the leases that are still held. Each is one
  call per batch: plain `HDEL` and `ZREM` written together for acks, a script for nacks, a plain
  `ZADD XX` for extensions.
- A consumer that dies keeps its leases until they expire; the next claim, by anyone, gives the
  messages out again with their delivery count raised.
- A receiver waiting on an empty channel waits in the server: a blocking pop on the channel's
  wake-up list, with the claim written right behind it, so that the server claims for it the moment
  a wake-up token arrives and one reply brings the messages. Scripts push a token when messages
  become ready or a delayed one arrives; a receiver also claims again when the next delayed message
  or lease is due by the app's clock. Nothing polls in a tight loop.

Times are epoch seconds from the app's clock, so producers and consumers need synchronised clocks
(as they do for `tidings.deliver-at` anyway). Durability is the Redis server's configuration
(`appendonly yes`, ideally with `appendfsync always`). A lost connection is retried with backoff for
up to 30 seconds before an operation raises `ChannelUnavailable`. Retrying a `send` whose reply was
lost may store the batch twice, which deduplication absorbs; a lost `receive` reply leaves its
messages leased until the lease runs out. Needs Redis 6.2 or later.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from itertools import count
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from tidings import headers as h
from tidings._clock import Clock, SystemClock
from tidings._message import Envelope
from tidings.channels.base import (
    Capabilities,
    Channel,
    ChannelEnvironment,
    Delivery,
    finish_even_if_cancelled,
)
from tidings.exceptions import ChannelUnavailable, DriverMissing

from ._codec import bulk, decode_batch, entry, frame, join_receipts, new_member

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ._driver import Scripts

__all__ = ["RedisChannel"]

T = TypeVar("T")

#: How long an operation keeps retrying a lost connection before giving up.
_RECONNECT_TIMEOUT: Final = 30.0
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0
#: A waiting receiver claims again at least this often, in case a wake-up token was lost (a server
#: restarted without persistence, say).
_LONGEST_WAIT: Final = 5.0
#: Priorities are kept where a lane's score (a double) still tells them apart.
_PRIORITY_LIMIT: Final = 2**53 - 1


@final
class RedisChannel(Channel):
    """A queue channel on Redis with native delay, priority lanes and lease-based redelivery."""

    capabilities = Capabilities(delay=True, priority=True)
    # A claim's round trip takes about as long as handling its batch: keep a second one on the wire.
    concurrent_receives = 2

    def __init__(
        self,
        name: str,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        lease_seconds: float = 30.0,
        key_prefix: str = "tidings",
    ) -> None:
        super().__init__(name, lease_seconds=lease_seconds)
        try:
            from . import _driver
        except ModuleNotFoundError as error:
            if error.name is not None and error.name.split(".")[0] == "redis":
                raise DriverMissing("RedisChannel", "redis", "redis") from error
            raise
        self._driver = _driver
        self.url = url
        base = f"{key_prefix}:{{{name}}}:"
        self._delayed_key = base + "delayed"
        self._leases_key = base + "leases"
        self._lanes_key = base + "lanes"
        self._lane_prefix = base + "lane:"
        self._wake_key = base + "wake"
        self._bodies_key = base + "bodies"
        self._keys = [self._delayed_key, self._leases_key, self._lanes_key, self._wake_key, self._bodies_key]
        # Member ids: unique per channel object, and across processes by the random part.
        self._uid_prefix = uuid.uuid4().hex[:16] + "-"
        self._uids = count()
        self._clock: Clock = SystemClock()
        self._client: Redis | None = None
        self._scripts: Scripts | None = None

    def __repr__(self) -> str:
        return f"RedisChannel({self.name!r}, url={self._driver.redact(self.url)!r})"

    async def connect(self, environment: ChannelEnvironment) -> None:
        from . import _scripts

        self._clock = environment.clock
        client = self._driver.open_client(self.url)
        try:
            await client.ping()
        except self._driver.RETRYABLE_ERRORS as error:
            await client.aclose()
            raise ChannelUnavailable(
                f"Redis at {self._driver.redact(self.url)} cannot be reached ({error}); "
                "check that the server runs and the URL is right",
                channel=self.name,
            ) from error
        self._client = client
        sources = {name: getattr(_scripts, name) for name in _scripts.__all__}
        self._scripts = self._driver.Scripts(client, sources, self._keys)

    async def close(self) -> None:
        client, scripts = self._client, self._scripts
        self._client = self._scripts = None  # first: waiting receivers see it when their wait ends
        if scripts is not None:
            await scripts.close()
        if client is not None:
            await client.aclose()

    def _connected(self) -> Redis:
        if self._client is None:
            raise self._not_connected()
        return self._client

    def _not_connected(self) -> RuntimeError:
        return RuntimeError(f"{self!r} is not connected; call connect() first")

    def _connected_scripts(self) -> Scripts:
        if self._scripts is None:
            raise self._not_connected()
        return self._scripts

    async def _run(self, script: str, args: list[Any], deliveries: Sequence[Delivery] = ()) -> Any:
        """Run one of the channel's scripts, the deliveries' receipts as its last arguments."""
        operation = partial(
            self._connected_scripts().run, script, args, join_receipts(deliveries), len(deliveries)
        )
        return await self._riding_out(operation)

    async def _plain(self, heads: list[list[str]], arguments: bytes, count: int) -> Any:
        """Plain commands written together, each `head` followed by the same `count` packed arguments."""
        return await self._riding_out(partial(self._connected_scripts().commands, heads, arguments, count))

    async def _riding_out(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run an operation, and again while a lost connection is being restored."""
        try:
            return await operation()
        except self._driver.RETRYABLE_ERRORS:
            return await self._retrying(operation)

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run an operation, retrying it with backoff while the connection is being restored."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RECONNECT_TIMEOUT
        backoff = 0.0  # the first retry is immediate: a killed connection just needs reopening
        while True:
            await asyncio.sleep(backoff)
            try:
                return await operation()
            except self._driver.RETRYABLE_ERRORS as error:
                if loop.time() >= deadline:
                    raise ChannelUnavailable(
                        f"lost Redis at {self._driver.redact(self.url)} and could not reconnect "
                        f"within {_RECONNECT_TIMEOUT:g} s ({error})",
                        channel=self.name,
                    ) from error
            backoff = min(max(backoff * 2, _FIRST_BACKOFF), _MAX_BACKOFF)

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        self._connected()
        if not envelopes:
            return
        now = self._clock.now()
        uid_prefix, uids = self._uid_prefix, self._uids
        lanes: dict[str, list[bytes]] = {}
        stored: list[bytes | str] = []
        delayed: list[bytes | str] = []
        for envelope in envelopes:
            headers = envelope.headers
            priority = headers.get(h.PRIORITY)
            if priority is None:
                priority = "0"
            elif priority != "0":  # one lane per number: "+5", "05" and "5" share one
                number = max(-_PRIORITY_LIMIT, min(_PRIORITY_LIMIT, int(priority)))
                priority = str(number)
            member = new_member(priority, f"{uid_prefix}{next(uids)}")
            stored += (member, entry(member, envelope))
            deliver_at = headers.get(h.DELIVER_AT)
            if deliver_at is not None and (due := float(deliver_at)) > now:
                delayed += (repr(due), member)
            elif (lane := lanes.get(priority)) is None:
                lanes[priority] = [member]
            else:
                lane.append(member)
        args: list[Any] = [self._lane_prefix, frame(stored), frame(delayed) if delayed else ""]
        for priority, members in lanes.items():
            args += (priority, frame(members))
        await self._run("SEND", args)

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        self._connected()
        if max_messages <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        lease_seconds, prefix = self.lease_seconds, self._lane_prefix
        due_in: float | None = None
        wait = 0.0  # the first claim at once
        while True:
            now = self._clock.now()
            # A claim made after a wait leases from the end of the wait at the earliest.
            args = [prefix, repr(now), repr(now + lease_seconds + wait), max_messages]
            reply = await (self._claim_after_wait(args, wait, due_in) if wait else self._claim(args))
            if not isinstance(reply, list):
                return decode_batch(reply)
            remaining = deadline - loop.time()
            if remaining <= 0 or self._client is None:  # timed out, or closed while waiting
                return []
            due_in = float(reply[0]) - self._clock.now() if reply[0] else None
            # Something due already (a claim after a wait used the time from before it): claim now.
            wait = 0.0 if due_in is not None and due_in <= 0 else min(remaining, _LONGEST_WAIT)

    async def _claim(self, args: list[Any]) -> Any:
        return await finish_even_if_cancelled(self._run("CLAIM", args), self._give_back_claimed)

    async def _claim_after_wait(self, args: list[Any], wait: float, due_in: float | None) -> Any:
        """Claim once a wake-up token comes, `wait` seconds pass, or `due_in` seconds pass on the
        app's clock (a test clock may move faster than the server's)."""
        waiting = self._connected_scripts().after_pop(self._wake_key, wait, "CLAIM", args)
        claiming = asyncio.ensure_future(waiting.run())
        due = None if due_in is None else asyncio.ensure_future(self._clock.sleep(due_in))
        try:
            if due is not None:
                await asyncio.wait({claiming, due}, return_when=asyncio.FIRST_COMPLETED)
                if not claiming.done():
                    # If this fails, the wait ends by itself within `wait` seconds.
                    with contextlib.suppress(*self._driver.RETRYABLE_ERRORS):
                        await waiting.interrupt()
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # Stopped while waiting in the server: end the wait there; the claim behind it still
            # runs, and what it took goes straight back.
            with contextlib.suppress(Exception):
                await waiting.interrupt()
                await self._give_back_claimed(await claiming)
            raise
        except self._driver.RETRYABLE_ERRORS:
            if self._client is None:
                return [""]  # closed while waiting
            return await self._claim(args)  # the waiting connection was lost: claim on a fresh one
        finally:
            if due is not None:
                due.cancel()

    async def _give_back_claimed(self, reply: Any) -> None:
        if not isinstance(reply, list):  # a list is the "nothing claimed" reply
            await self.nack(decode_batch(reply))

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._connected()
        if deliveries:
            # The entries first: a lease left without its entry, should the server stop between
            # the two, is dropped by the claim that finds it expired, as acked.
            heads = [["HDEL", self._bodies_key], ["ZREM", self._leases_key]]
            await self._plain(heads, join_receipts(deliveries), len(deliveries))

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        self._connected()
        if deliveries:
            due = repr(self._clock.now() + delay) if delay > 0 else ""
            await self._run("NACK", [self._lane_prefix, due], deliveries)

    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        self._connected()
        if deliveries:
            # Only leases still held move (XX): one that ran out, maybe redelivered since, stays gone.
            until = bulk(repr(self._clock.now() + seconds))
            scored = b"".join([until + delivery.receipt for delivery in deliveries])
            await self._plain([["ZADD", self._leases_key, "XX"]], scored, 2 * len(deliveries))

    async def purge(self) -> None:
        self._connected()
        await self._run("PURGE", [self._lane_prefix])

    async def depth(self) -> int:
        self._connected()
        total: int = await self._run("DEPTH", [self._lane_prefix])
        return total
