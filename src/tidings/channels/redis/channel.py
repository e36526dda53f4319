"""A queue channel on Redis: priority lanes, a sorted set for delays, leases with crash recovery.

How messages move (see `_scripts` for the key layout):

- `send` stores each payload in one hash and appends its id to the list of its priority (its
  *lane*), or, when it is not due yet, adds it to the `delayed` sorted set scored by its due time.
- `receive` runs one script that first moves due delayed messages and expired leases to their lanes,
  then pops up to `max_messages` from the lanes, highest priority first, and records each in the
  `leases` sorted set scored by its lease expiry. The whole batch is one round trip, and atomic, so
  any number of consumers never get the same lease and never lose a message between them.
- `ack` removes the leases and payloads of a batch in one script; `nack` moves them back to their
  lane or to the delayed set; `extend_lease` rescores them.
- A consumer that dies keeps its leases until they expire; the next claim by anyone gives the
  messages out again, with their delivery count raised.
- Receivers waiting on an empty channel are woken by a publication on the channel's wake-up topic,
  or when the next delayed message or lease is due; they never poll in a tight loop.

Times are epoch seconds from the app's clock. Redis durability is the server's configuration
(`appendonly yes` with `appendfsync everysec` or `always`); the channel stores a batch before `send`
returns. A lost connection is retried with backoff for up to 30 seconds, after which the operation
raises `ChannelUnavailable`. Retrying a `send` whose reply was lost may store the batch twice, which
the consumers' deduplication absorbs; a lost `receive` reply leaves its messages leased until the
lease runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

from tidings import headers as h
from tidings._clock import Clock, SystemClock
from tidings._message import Envelope
from tidings.channels.base import Capabilities, Channel, ChannelEnvironment, Delivery
from tidings.exceptions import ChannelUnavailable, DriverMissing

from ._codec import decode_envelope, encode_envelope

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from ._wakeup import Wakeups

__all__ = ["RedisChannel"]

T = TypeVar("T")

#: How long an operation keeps retrying a lost connection before giving up.
_RECONNECT_TIMEOUT: Final = 30.0
_FIRST_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 1.0
#: A waiting receiver claims again at least this often, in case a wake-up was lost in transit.
_LONGEST_WAIT: Final = 5.0
#: Messages per script call; bigger batches are split so that one call never blocks Redis for long.
_SEND_SLICE: Final = 1000


@final
class RedisChannel(Channel):
    """A queue channel on Redis with native delay, priority lanes and lease-based redelivery."""

    capabilities = Capabilities(delay=True, priority=True)

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
        self._payloads_key = base + "payloads"
        self._delayed_key = base + "delayed"
        self._leases_key = base + "leases"
        self._lanes_key = base + "lanes"
        self._sequence_key = base + "seq"
        self._lane_prefix = base + "lane:"
        self._wakeup_topic = base + "wake"
        self._send_keys = [
            self._payloads_key,
            self._delayed_key,
            self._lanes_key,
            self._sequence_key,
        ]
        self._claim_keys = [
            self._payloads_key,
            self._delayed_key,
            self._leases_key,
            self._lanes_key,
        ]
        self._ack_keys = [self._payloads_key, self._leases_key]
        self._nack_keys = [self._delayed_key, self._leases_key, self._lanes_key]
        self._clock: Clock = SystemClock()
        self._client: Redis | None = None
        self._wakeups: Wakeups | None = None
        self._scripts: dict[str, AsyncScript] = {}

    def __repr__(self) -> str:
        return f"RedisChannel({self.name!r}, url={self._driver.redact(self.url)!r})"

    async def connect(self, environment: ChannelEnvironment) -> None:
        from . import _scripts
        from ._wakeup import Wakeups

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
        self._scripts = {
            name: client.register_script(getattr(_scripts, name))
            for name in ("SEND", "CLAIM", "ACK", "NACK", "PURGE")
        }
        self._wakeups = Wakeups(client, self._wakeup_topic, self._clock)

    async def close(self) -> None:
        if self._wakeups is not None:
            await self._wakeups.close()
            self._wakeups = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _connected(self) -> Redis:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not connected; call connect() first")
        return self._client

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the channel's scripts, riding out a lost connection."""
        run = self._scripts[script]
        try:
            return await run(keys, args)
        except self._driver.RETRYABLE_ERRORS:
            return await self._retrying(partial(run, keys, args))

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
        for first in range(0, len(envelopes), _SEND_SLICE):
            args = self._send_arguments(envelopes[first : first + _SEND_SLICE])
            await self._run("SEND", self._send_keys, args)

    def _send_arguments(self, envelopes: Sequence[Envelope]) -> list[Any]:
        now = self._clock.now()
        args: list[Any] = [self._lane_prefix, self._wakeup_topic]
        for envelope in envelopes:
            headers = envelope.headers
            priority = headers.get(h.PRIORITY)
            deliver_at = headers.get(h.DELIVER_AT)
            due = ""
            if deliver_at is not None and (at := float(deliver_at)) > now:
                due = repr(at)
            lane = "0" if priority is None else str(int(priority))
            args += (lane, due, encode_envelope(envelope))
        return args

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        self._connected()
        wakeups = self._wakeups
        assert wakeups is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        keys = self._claim_keys
        lease_seconds = self.lease_seconds
        subscribed = False
        while True:
            seen = wakeups.version
            now = self._clock.now()
            until = now + lease_seconds
            args = [self._lane_prefix, self._wakeup_topic, repr(now), repr(until), max_messages]
            reply = await self._run("CLAIM", keys, args)
            if not isinstance(reply, bytes):
                return self._deliveries(reply)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if not subscribed:
                # Claim again once subscribed: a message sent before the subscription was
                # confirmed would not wake us.
                subscribed = await wakeups.subscribed(remaining)
                continue
            if wakeups.version != seen:
                continue
            due_in = float(reply) - now if reply else None
            await wakeups.wait(min(remaining, _LONGEST_WAIT), due_in)

    def _deliveries(self, reply: list[Any]) -> list[Delivery]:
        items = iter(reply)
        return [
            Delivery(decode_envelope(payload), member, count)
            for member, payload, count in zip(items, items, items, strict=True)
        ]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        self._connected()
        args = [delivery.receipt for delivery in deliveries]
        await self._run("ACK", self._ack_keys, args)

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        if not deliveries:
            return
        self._connected()
        due = repr(self._clock.now() + delay) if delay > 0 else ""
        args = [self._lane_prefix, self._wakeup_topic, due]
        args += [delivery.receipt for delivery in deliveries]
        await self._run("NACK", self._nack_keys, args)

    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        if not deliveries:
            return
        client = self._connected()
        until = self._clock.now() + seconds
        # XX: only leases still held are moved; an expired (and maybe redelivered) one stays gone.
        leases = {delivery.receipt: until for delivery in deliveries}
        await self._retrying(partial(client.zadd, self._leases_key, leases, xx=True))

    async def purge(self) -> None:
        self._connected()
        await self._run("PURGE", self._claim_keys, [self._lane_prefix])

    async def depth(self) -> int:
        client = self._connected()
        # Every message keeps its payload until acked, whether ready, delayed or leased.
        count: int = await self._retrying(partial(client.hlen, self._payloads_key))
        return count
