"""A channel on NATS JetStream, spoken through nats-py.

What maps onto what:

- **Stream.** One work-queue stream per channel (`<prefix>-<name>`, or `stream=`) on the subject
  `<prefix>.<name>`, file storage by default. A message stays stored until it is acked, so the
  stream's message count is the channel's depth. The stream belongs to its channel alone.
- **Send.** Pipelined: up to `publish_window` messages go out at once, then their JetStream acks are
  awaited together. The envelope (body and headers) is the payload (`_codec`).
- **Receive.** One durable pull consumer, shared by every process that consumes the channel. A
  receive first asks for as many messages as it wants with `no_wait`, and when none are there, waits
  on the server for the first one with a request that expires with the receive's timeout. (nats-py's
  `fetch(n)` waits out its whole timeout when fewer than `n` messages come, so the channel sends its
  own pull requests; see `_pulls`.)
- **Lease.** The consumer's `ack_wait` is `lease_seconds`. `extend_lease` sends `+WPI` (in progress),
  which restarts `ack_wait`; an extension longer than `ack_wait` is kept up by repeating it every
  third of a lease until it is due. `max_deliver` is unlimited unless set: tidings' retry layer
  decides when a message has failed too often.
- **Ack, nack, extend.** One ack message per delivery, all written at once, the last one as a
  request: JetStream answers it once done and settles a connection's acks in order, so when the
  answer comes the whole batch is settled (nats-py's `ack()` alone is fire-and-forget). `nack` is
  `-NAK`, with `{"delay": ...}` for a delay.
- **Delay.** JetStream 2.9 cannot schedule a message. A delayed message is stored at once like any
  other, its due time in `tidings.deliver-at`. A receive that gets it early does not hand it out
  but naks it with `delay=` the time left: the server keeps it, durably, as an unacked delivery of
  the stream and delivers it again when it is due, to whichever receiver asks then. Every message
  waits on its own timer, so a short delay never waits behind a longer one, and nothing is held in a
  worker's memory. The server counts early deliveries in a message's delivery count; the channel
  subtracts those it naked itself (in this process) from `Delivery.delivery_count`. Because waiting
  messages are unacked deliveries, the consumer's `max_ack_pending` is unlimited. JetStream 2.9 does
  not keep a nak's delay across a server restart: a message waiting on one then comes back when
  its `ack_wait` since the early delivery ends (and is naked again if still early), so after a
  restart a delay can end up to one lease late, never early. A waiting pull request never expires
  at the moment a message naked by this process comes back (`_pull_expiry`), which JetStream 2.9
  can get wrong.
- **Priority.** JetStream delivers in stream order: `capabilities.priority` is False, so an app
  refuses `@priority` handlers on a NATS channel at start-up.
- **TTL.** Checked by the consumer on receive (JetStream 2.9 has no per-message expiry).
- **Reconnects.** nats-py reconnects on its own and subscribes again. Pull requests in flight on
  the lost connection are given up and sent again once it is back; deliveries the server made on it
  come back when their `ack_wait` ends. Messages and acks nats-py had not written yet go out after
  the reconnect; a publish window waits for their JetStream acks until a second after it, then
  publishes again what is still unconfirmed, which may store a message twice when only its ack was
  lost (deduplication absorbs it). `send`, `ack`, `nack` and `extend_lease` wait up to
  `wait_for_broker` seconds for the connection, then raise (`PublishFailed` for sends,
  `ChannelUnavailable` otherwise). A stream or consumer deleted under a running channel is declared
  again.

Needs nats-server 2.9 or later with JetStream enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, final
from urllib.parse import urlsplit, urlunsplit

from tidings import headers as h
from tidings._clock import Clock, SystemClock
from tidings._message import Envelope
from tidings.channels.base import Capabilities, Channel, ChannelEnvironment, Delivery
from tidings.exceptions import ChannelUnavailable, ConfigurationError, DriverMissing, PublishFailed

from ._codec import decode, delivery_fields, encode

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from ._publish import Confirmations
    from ._pulls import Pulls
    from ._topology import Topology

__all__ = ["NatsChannel"]

log = logging.getLogger("tidings.channels.nats")

_ACK: Final = b"+ACK"
_NAK: Final = b"-NAK"
_IN_PROGRESS: Final = b"+WPI"
#: How long one ack confirmation or publish window is waited for before it is sent again.
_CONFIRM_TIMEOUT: Final = 5.0
#: A message due this close is handed out rather than naked for a few milliseconds more.
_EARLY_TOLERANCE: Final = 0.01
#: Waiting on the server for less than this is not worth a request.
_SHORTEST_WAIT: Final = 0.01
#: How many early deliveries the channel remembers (by stream sequence) to correct delivery counts.
_EARLY_MEMORY: Final = 100_000
#: A waiting pull request does not end this close to the time a naked message comes back (see
#: `_pull_expiry`).
_EXPIRY_CLEARANCE: Final = 0.03
#: The pause between reconnect attempts once connected (the first attempt is immediate).
_RECONNECT_PAUSE: Final = 0.5
#: Unanswered pull requests check the stream and consumer at most this often.
_REPAIR_INTERVAL: Final = 1.0


@final
class NatsChannel(Channel):
    """A queue channel on a NATS JetStream work-queue stream, with durable delays and leases.

    `url` may list several servers of a cluster, separated by commas. `prefix` starts the channel's
    subject (`<prefix>.<name>`) and default stream name; `stream` names the stream instead.
    `max_deliver` caps deliveries per message (None: unlimited). `storage` is `"file"` or
    `"memory"`, `replicas` the stream's replica count in a cluster. `publish_window` is how many
    published messages wait for their JetStream acks at once; `wait_for_broker` how long
    operations wait for a lost connection before they raise.
    """

    capabilities = Capabilities(delay=True, priority=False)

    def __init__(
        self,
        name: str,
        *,
        url: str = "nats://127.0.0.1:4222",
        lease_seconds: float = 30.0,
        stream: str | None = None,
        prefix: str = "tidings",
        max_deliver: int | None = None,
        storage: str = "file",
        replicas: int = 1,
        publish_window: int = 1000,
        wait_for_broker: float = 30.0,
    ) -> None:
        super().__init__(name, lease_seconds=lease_seconds)
        try:
            import nats  # noqa: F401
        except ImportError:
            raise DriverMissing("NatsChannel", "nats", "nats") from None
        from ._topology import Topology, default_stream_name

        if not prefix or not all(c.isalnum() or c in "-_" for c in prefix):
            raise ValueError(f"a NATS prefix uses letters, digits, '-' and '_' only: {prefix!r}")
        if stream is not None and (not stream or not all(c.isalnum() or c in "-_" for c in stream)):
            raise ValueError(f"a NATS stream name uses letters, digits, '-' and '_' only: {stream!r}")
        if max_deliver is not None and max_deliver < 1:
            raise ValueError(f"max_deliver must be at least 1 (or None for no limit), got {max_deliver}")
        if publish_window < 1:
            raise ValueError(f"publish_window must be at least 1, got {publish_window}")
        self.url = url
        self.publish_window = publish_window
        self.wait_for_broker = wait_for_broker
        self.subject = f"{prefix}.{name}"
        self._topology: Topology = Topology(
            stream=stream or default_stream_name(prefix, name),
            subject=self.subject,
            ack_wait=lease_seconds,
            max_deliver=max_deliver or -1,
            storage=storage,
            replicas=replicas,
        )
        self.stream = self._topology.stream
        self._clock: Clock = SystemClock()
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._pulls: Pulls | None = None
        self._confirmations: Confirmations | None = None
        # Made anew by each connect, on the loop that runs the channel then.
        self._connected = asyncio.Event()
        self._closing = asyncio.Event()
        self._receiving = asyncio.Lock()
        # Stream sequence -> early deliveries this process naked, oldest first.
        self._early: dict[int, int] = {}
        # When the messages this process naked early come back, on the loop's clock (a heap).
        self._early_due: list[float] = []
        # Ack subject -> [extended until, last +WPI], both on the loop's clock.
        self._extended: dict[str, list[float]] = {}
        self._lease_keeper: asyncio.Task[None] | None = None
        self._repairing: asyncio.Task[None] | None = None
        self._last_repair = float("-inf")
        self._background: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"NatsChannel({self.name!r}, url={_redact(self.url)!r})"

    # -- connection -------------------------------------------------------------------------------

    async def connect(self, environment: ChannelEnvironment) -> None:
        """Connect, declare the stream and consumer; raises `ChannelUnavailable` if NATS is not there."""
        if self._client is not None:
            return
        from nats.aio.client import Client

        from ._publish import Confirmations
        from ._pulls import Pulls

        self._clock = environment.clock
        self._connected, self._closing, self._receiving = asyncio.Event(), asyncio.Event(), asyncio.Lock()
        client = Client()
        try:
            # Few attempts at first, so that a wrong URL fails fast; unlimited ones once connected.
            await client.connect(
                [server.strip() for server in self.url.split(",")],
                name=f"tidings {environment.app_name} {self.name}",
                allow_reconnect=True,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,  # type: ignore[arg-type]
                connect_timeout=5,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except Exception as error:
            with contextlib.suppress(Exception):
                await client.close()
            raise ChannelUnavailable(
                f"cannot reach NATS for channel {self.name!r} at {_redact(self.url)}: {error!r}",
                channel=self.name,
            ) from error
        client.options["max_reconnect_attempts"] = -1
        client.options["reconnect_time_wait"] = _RECONNECT_PAUSE
        try:
            js = client.jetstream()
            await self._topology.declare(js)
            pulls = Pulls(client, self._topology.next_subject, self._on_conflict)
            confirmations = Confirmations(client)
            await pulls.start()
            await confirmations.start()
        except ConfigurationError:
            await client.close()
            raise
        except Exception as error:
            await client.close()
            raise ChannelUnavailable(
                f"NATS at {_redact(self.url)} did not set up stream {self.stream!r} for channel "
                f"{self.name!r} (is JetStream enabled?): {error!r}",
                channel=self.name,
            ) from error
        self._client, self._js, self._pulls, self._confirmations = client, js, pulls, confirmations
        self._connected.set()

    async def close(self) -> None:
        """Close the connection after what was written reached the server; unacked messages go back
        to the stream when their lease ends."""
        client, pulls = self._client, self._pulls
        if client is None:
            return
        self._client = self._js = None  # first, so that waiting operations see it when woken
        self._closing.set()
        self._connected.clear()
        if pulls is not None:
            pulls.close()
        if self._confirmations is not None:
            self._confirmations.abandon()
        for task in (self._lease_keeper, self._repairing):
            if task is not None:
                task.cancel()
        self._extended.clear()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await client.flush(timeout=2)
        with contextlib.suppress(Exception):
            await client.close()

    def _require(self) -> Client:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not connected; call connect() first")
        return self._client

    async def _on_error(self, error: Exception) -> None:
        from nats.errors import StaleConnectionError

        # A lost connection is reported once by `_on_disconnected`; failed reconnect attempts (every
        # half second while NATS is away) and the end of the old connection only go to debug.
        level = logging.DEBUG if isinstance(error, OSError | StaleConnectionError) else logging.WARNING
        log.log(level, "NATS client of channel %r: %r", self.name, error)

    async def _on_disconnected(self) -> None:
        if self._client is None:
            return
        self._connected.clear()
        if self._pulls is not None:
            self._pulls.abandon()
        log.warning("lost the NATS connection of channel %r; reconnecting", self.name)

    async def _on_reconnected(self) -> None:
        if self._client is None:
            return
        log.info("NATS connection of channel %r is back", self.name)
        self._connected.set()
        if self._confirmations is not None:
            self._confirmations.reconnected()
        self._repair_soon()

    async def _wait_connected(self, deadline: float) -> bool:
        """Wait until the connection is up (True) or `deadline` passed or the channel closed."""
        if self._connected.is_set():
            return True
        loop = asyncio.get_running_loop()
        waiters = [asyncio.ensure_future(self._connected.wait()), asyncio.ensure_future(self._closing.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=max(deadline - loop.time(), 0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        return self._connected.is_set()

    def _on_conflict(self, description: str) -> None:
        log.warning("NATS consumer of channel %r: %s", self.name, description)
        if "Deleted" in description:
            self._repair_soon()

    def _repair_soon(self) -> None:
        """Declare the stream and consumer again if someone deleted them (at most once a second)."""
        loop = asyncio.get_running_loop()
        if (self._repairing is not None and not self._repairing.done()) or (
            loop.time() - self._last_repair < _REPAIR_INTERVAL
        ):
            return
        self._last_repair = loop.time()
        self._repairing = asyncio.ensure_future(self._repair())

    async def _repair(self) -> None:
        js = self._js
        if js is None:
            return
        try:
            if not await self._topology.exists(js):
                log.warning("stream %r of channel %r was gone; declaring it again", self.stream, self.name)
                await self._topology.declare(js)
        except Exception as error:
            log.warning("checking stream %r of channel %r failed: %r", self.stream, self.name, error)

    # -- sending ----------------------------------------------------------------------------------

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        client = self._require()
        if not envelopes:
            return
        from nats.errors import ConnectionClosedError
        from nats.errors import Error as NatsError

        payloads = [encode(envelope) for envelope in envelopes]
        limit = client.max_payload
        if too_big := [i for i, payload in enumerate(payloads) if len(payload) > limit]:
            raise self._publish_failed(
                envelopes,
                list(range(len(envelopes))),
                f"{len(too_big)} of them exceed the server's max_payload of {limit:,} bytes "
                f"(the first is message {envelopes[too_big[0]].message_id!r}, "
                f"{len(payloads[too_big[0]]):,} bytes); none was sent",
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_for_broker
        todo = list(range(len(payloads)))
        redeclared = False
        while True:
            if not await self._wait_connected(deadline):
                raise self._publish_failed(envelopes, todo, "NATS could not be reached")
            confirmations = self._confirmations
            assert confirmations is not None
            unanswered: list[int] = []
            missing: list[int] = []
            refused: list[tuple[int, str]] = []
            window = self.publish_window
            for start in range(0, len(todo), window):
                chunk = todo[start : start + window]
                try:
                    outcome = await confirmations.publish(
                        self.subject, payloads, chunk, _CONFIRM_TIMEOUT, deadline
                    )
                except ConnectionClosedError:
                    raise self._publish_failed(envelopes, todo, "the connection is closed") from None
                except NatsError:
                    unanswered += chunk  # cut off mid-window by a lost connection
                    continue
                unanswered += outcome.unanswered
                missing += outcome.missing_stream
                refused += outcome.refused
            if refused:
                reason = f"JetStream refused {len(refused)} of them: {refused[0][1]}"
                raise self._publish_failed(envelopes, [i for i, _ in refused] + missing + unanswered, reason)
            if missing:
                if redeclared:
                    raise self._publish_failed(envelopes, missing + unanswered, "no stream took them")
                redeclared = True
                await self._redeclare()
            todo = sorted(missing + unanswered)
            if not todo:
                return
            if loop.time() >= deadline:
                raise self._publish_failed(envelopes, todo, "JetStream did not confirm them")

    async def _redeclare(self) -> None:
        js = self._js
        if js is not None:
            log.warning("no stream for channel %r took messages; declaring it again", self.name)
            with contextlib.suppress(Exception):
                await self._topology.declare(js)

    def _publish_failed(
        self, envelopes: Sequence[Envelope], indexes: list[int], reason: str
    ) -> PublishFailed:
        return PublishFailed(
            f"{len(indexes)} of {len(envelopes)} messages for channel {self.name!r} were not stored "
            f"in stream {self.stream!r} at {_redact(self.url)}: {reason}",
            channel=self.name,
            envelopes=[envelopes[i] for i in sorted(indexes)],
        )

    # -- receiving --------------------------------------------------------------------------------

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        self._require()
        if max_messages <= 0:
            return []
        pulls = self._pulls
        assert pulls is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._receiving:
            pulls.collecting = True
            try:
                return await self._collect(pulls, max_messages, deadline, loop)
            finally:
                pulls.collecting = False
                if pulls.arrived:
                    # Cancelled, or more came than asked for: straight back to the stream.
                    self._spawn(self._give_back([msg.reply for msg in pulls.arrived], _NAK))
                    pulls.arrived.clear()

    async def _collect(
        self, pulls: Pulls, max_messages: int, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> list[Delivery]:
        probe = True
        while not pulls.closed:
            if pulls.arrived and (deliveries := await self._take_due(pulls.arrived, max_messages)):
                return deliveries
            if not self._connected.is_set():
                if not await self._wait_connected(deadline):
                    return []
                probe = True
            if probe:
                probe = False
                if not await pulls.pull(max_messages, None) and not pulls.closed:
                    self._repair_soon()
                continue
            remaining = self._pull_expiry(loop.time(), deadline - loop.time())
            if remaining < _SHORTEST_WAIT:
                return []
            await pulls.pull(1, remaining)
            probe = True
        return []

    def _pull_expiry(self, now: float, remaining: float) -> float:
        """How long a waiting pull request may last: `remaining`, unless it would then end just as a
        message this process naked comes back.

        JetStream 2.9 can hand a message whose nak delay ends to a request that is expiring at that
        very moment and answer neither (seen with nats-server 2.9.10): the message then stays
        leased to nobody until `ack_wait` ends. Ending the request a little earlier leaves the
        message to the next request.
        """
        due = self._early_due
        while due and due[0] < now:
            heapq.heappop(due)
        expires = now + remaining
        for when in due:
            if abs(when - expires) < _EXPIRY_CLEARANCE:
                expires = min(expires, when - _EXPIRY_CLEARANCE)
        return expires - now

    async def _take_due(self, arrived: deque[Msg], max_messages: int) -> list[Delivery]:
        now = self._clock.now()
        loop_now = asyncio.get_running_loop().time()
        early_counts = self._early
        deliveries: list[Delivery] = []
        early: list[bytes] = []
        replies: list[str] = []
        while arrived and len(deliveries) < max_messages:
            msg = arrived.popleft()
            reply = msg.reply
            envelope = decode(msg.data)
            delivered, sequence = delivery_fields(reply)
            deliver_at = envelope.headers.get(h.DELIVER_AT)
            if deliver_at is not None:
                wait = _seconds_until(deliver_at, now)
                if wait > _EARLY_TOLERANCE:
                    heapq.heappush(self._early_due, loop_now + wait)
                    replies.append(reply)
                    early.append(b'-NAK {"delay":%d}' % int(wait * 1e9))
                    early_counts[sequence] = early_counts.pop(sequence, 0) + 1
                    continue
            if early_counts:
                delivered -= early_counts.get(sequence, 0)
            deliveries.append(Delivery(envelope, reply, max(delivered, 1)))
        if early:
            while len(early_counts) > _EARLY_MEMORY:
                del early_counts[next(iter(early_counts))]
            del self._early_due[_EARLY_MEMORY:]  # a heap stays one when cut short
            # Not confirmed: a lost nak only means the message comes back when its lease ends.
            client = self._require()
            for reply, nak in zip(replies, early, strict=True):
                await client.publish(reply, nak)
        return deliveries

    async def _give_back(self, replies: list[str], payload: bytes) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                for reply in replies:
                    await client.publish(reply, payload)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- settling ---------------------------------------------------------------------------------

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            self._require()
            return
        replies = [delivery.receipt for delivery in deliveries]
        if self._early:  # acked messages are gone: their early deliveries need no correcting
            for reply in replies:
                self._early.pop(delivery_fields(reply)[1], None)
        await self._settle(replies, _ACK, release=True)

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        if not deliveries:
            self._require()
            return
        payload = b'-NAK {"delay":%d}' % int(delay * 1e9) if delay > 0 else _NAK
        await self._settle([delivery.receipt for delivery in deliveries], payload, release=True)

    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        if not deliveries:
            self._require()
            return
        replies = [delivery.receipt for delivery in deliveries]
        if seconds > self.lease_seconds:
            now = asyncio.get_running_loop().time()
            for reply in replies:
                self._extended[reply] = [now + seconds, now]
            if self._lease_keeper is None or self._lease_keeper.done():
                self._lease_keeper = asyncio.ensure_future(self._keep_leases())
        await self._settle(replies, _IN_PROGRESS, release=False)

    async def _settle(self, replies: list[str], payload: bytes, *, release: bool) -> None:
        """Send one ack message per delivery and wait until JetStream processed them all."""
        client = self._require()
        from nats.errors import ConnectionClosedError, NoRespondersError
        from nats.errors import Error as NatsError

        if release:
            self._forget(replies)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_for_broker
        last = replies[-1]
        while True:
            if not await self._wait_connected(deadline):
                break
            try:
                for reply in replies[:-1]:
                    await client.publish(reply, payload)
                await client.request(last, payload, timeout=_CONFIRM_TIMEOUT)
                return
            except NoRespondersError:
                return  # the stream is gone, and with it what there was to settle
            except ConnectionClosedError:
                break
            except (NatsError, TimeoutError):
                # The answer was lost with the connection: send the whole batch again (acks are
                # idempotent) once it is back.
                if loop.time() >= deadline:
                    break
        raise ChannelUnavailable(
            f"NATS at {_redact(self.url)} did not confirm {payload.split()[0].decode()} for "
            f"{len(replies)} deliveries of channel {self.name!r}",
            channel=self.name,
        )

    def _forget(self, replies: list[str]) -> None:
        """Stop extending the leases of deliveries that are settled."""
        extended = self._extended
        if extended:
            for reply in replies:
                extended.pop(reply, None)

    async def _keep_leases(self) -> None:
        """Repeat `+WPI` for leases extended beyond one `ack_wait` until they are due."""
        loop = asyncio.get_running_loop()
        interval = self.lease_seconds / 3
        extended = self._extended
        while extended:
            await asyncio.sleep(interval)
            now = loop.time()
            due = []
            for reply, entry in list(extended.items()):
                until, last = entry
                if until <= last + self.lease_seconds:
                    del extended[reply]
                else:
                    entry[1] = now
                    due.append(reply)
            if due:
                try:
                    await self._settle(due, _IN_PROGRESS, release=False)
                except Exception as error:
                    log.warning("extending %d leases on channel %r failed: %r", len(due), self.name, error)

    # -- operators --------------------------------------------------------------------------------

    async def purge(self) -> None:
        self._require()
        from nats.js.errors import NotFoundError

        js = await self._jetstream()
        with contextlib.suppress(NotFoundError):
            await js.purge_stream(self.stream)
        self._early.clear()

    async def depth(self) -> int:
        self._require()
        from nats.js.errors import NotFoundError

        js = await self._jetstream()
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            return 0
        return int(info.state.messages)

    async def _jetstream(self) -> JetStreamContext:
        loop = asyncio.get_running_loop()
        if not await self._wait_connected(loop.time() + self.wait_for_broker) or self._js is None:
            raise ChannelUnavailable(
                f"NATS at {_redact(self.url)} is unreachable for channel {self.name!r}", channel=self.name
            )
        return self._js


def _seconds_until(deliver_at: str, now: float) -> float:
    try:
        return float(deliver_at) - now
    except ValueError:
        return 0.0  # unreadable: due now rather than never


def _redact(url: str) -> str:
    """The URL without its password or token, for error messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if has_password else f"***@{host}"))
