"""`SqlChannel`: a queue in a table of the app's database, and the outbox of its transactions."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, final

import msgspec

from tidings._clock import Clock, SystemClock
from tidings._message import Envelope
from tidings.channels.base import (
    Capabilities,
    Channel,
    ChannelEnvironment,
    Delivery,
    finish_even_if_cancelled,
)
from tidings.channels.sql._queue import NewRow, Queue, queue_for
from tidings.channels.sql._wakeup import Signal, Wakeups, wakeups_for
from tidings.exceptions import ChannelUnavailable, ConfigurationError, TidingsError
from tidings.sql import Database, DatabaseUnavailable, TransactionScope, current_scope
from tidings.sql._registry import acquire_database, release_database

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SqlChannel"]

T = TypeVar("T")

#: The shortest pause between two polls of an idle channel; pauses double from here.
_FIRST_PAUSE = 0.02
#: With LISTEN/NOTIFY working, polls only guard against lost notifications.
_LISTENING_POLL_SECONDS = 5.0
#: State key of the channels to wake once the open transaction commits.
_WAKE_AFTER_COMMIT = "tidings.channels.sql.wake"

_encode_headers = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


@final
class SqlChannel(Channel):
    """A queue channel stored in the app's database; sends join the open transaction (the outbox).

    `database` is a URL, a `tidings.sql.Database`, or None for the app's database. Messages are rows;
    a consumer claims a batch with `FOR UPDATE SKIP LOCKED` (PostgreSQL, MySQL 8, MariaDB 10.6+) or
    under SQLite's single writer, leasing it for `lease_seconds`; an expired lease makes the rows
    receivable again. Acked rows are deleted. Waiting consumers wake on PostgreSQL NOTIFY, elsewhere
    by polling that backs off from 20 ms to `poll_interval` while the channel stays empty.

    Inside `Database.transaction()` on the same database, `send` writes through the transaction's
    connection, so the messages commit or roll back with the business writes.

    Sends always commit durably. On PostgreSQL, claims, nacks, lease extensions and acks commit
    without waiting for the WAL flush: after a crash of the database server, messages claimed or
    acked in its last moments are delivered again (never lost; deduplication absorbs the repeat).
    `durable_acks=True` makes every ack wait for the flush instead (one WAL flush per ack; about
    10-15 % of the drain rate in bench/sql_channel.py).
    """

    capabilities = Capabilities(delay=True, priority=True, transactional=True)

    def __init__(
        self,
        name: str,
        *,
        database: str | URL | AsyncEngine | Database | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        durable_acks: bool = False,
    ) -> None:
        super().__init__(name, lease_seconds=lease_seconds)
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        if database is not None and not isinstance(database, Database):
            Database(database)  # a bad URL or a missing driver fails here, not when the app starts
        self.poll_interval = poll_interval
        self.durable_acks = durable_acks
        self._database_option = database
        self._database: Database | None = None
        self._extensions: dict[str, Any] = {}
        self._queue: Queue | None = None
        self._wakeups: Wakeups | None = None
        self._signal = Signal()
        self._clock: Clock = SystemClock()
        self._pause = _FIRST_PAUSE
        self._listening = False
        #: (signal version, claim time) of the last claim that left no receivable message behind.
        self._drained: tuple[int, float] | None = None

    @property
    def database(self) -> Database:
        """The database this channel keeps its messages in (once connected)."""
        if self._database is None:
            raise TidingsError(f"{self!r} is not connected; call connect() (or start the app) first")
        return self._database

    async def connect(self, environment: ChannelEnvironment) -> None:
        option = self._database_option
        if option is None:
            option = environment.database
        if option is None:
            raise ConfigurationError(
                f"SqlChannel {self.name!r} has no database: pass database=... or give the app one"
            )
        self._clock = environment.clock
        self._extensions = environment.extensions
        try:
            database = await acquire_database(environment.extensions, option)
        except DatabaseUnavailable as exc:
            exc.channel = exc.channel or self.name
            raise
        try:
            self._queue = queue_for(database, durable_acks=self.durable_acks)
            self._wakeups = wakeups_for(database)
            self._signal = self._wakeups.signal(self.name)
            await self._wakeups.listen(self.name)
            self._listening = database.backend == "postgresql"
            if database.backend == "postgresql":
                # Claims skip each other's locked rows, so a second one can be on the wire while
                # the first batch is handled.
                self.concurrent_receives = 2
        except BaseException:
            self._queue = None
            await release_database(environment.extensions, database)
            raise
        self._database = database

    async def close(self) -> None:
        database, self._database = self._database, None
        if database is None:
            return
        if self._wakeups is not None and self._listening:
            with contextlib.suppress(Exception):
                await self._wakeups.unlisten(self.name)
        self._listening = False
        self._queue = None
        await release_database(self._extensions, database)

    # Sending

    def _row(self, envelope: Envelope, now: float) -> NewRow:
        deliver_at = envelope.deliver_at
        visible_at = deliver_at if deliver_at is not None and deliver_at > now else now
        return (
            envelope.message_id,
            envelope.priority,
            visible_at,
            envelope.expires_at,
            _encode_headers(envelope.headers).decode(),
            bytes(envelope.body),
        )

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        """Store a batch: in the open transaction on this database if there is one, else on its own."""
        if not envelopes:
            return
        queue = self._connected_queue()
        now = self._clock.now()
        rows = [self._row(envelope, now) for envelope in envelopes]
        scope = current_scope(self.database)
        if scope is not None:
            async with scope.lock:
                await queue.insert(scope.connection, self.name, rows, now)
            self._wake_after_commit(scope)
            return
        await self._call(lambda: queue.send(self.name, rows, now))
        self._signal.fire()

    def _wake_after_commit(self, scope: TransactionScope) -> None:
        waiting: set[Signal] | None = scope.state.get(_WAKE_AFTER_COMMIT)
        if waiting is None:
            waiting = scope.state[_WAKE_AFTER_COMMIT] = set()

            async def wake() -> None:
                for signal in waiting:
                    signal.fire()

            scope.after_commit.append(wake)
        waiting.add(self._signal)

    # Receiving

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        queue = self._connected_queue()
        if max_messages <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        signal = self._signal
        # With every send notified, a claim right after one that left the queue empty, with nothing
        # notified since, would find nothing: such a receive waits first (and claims when woken).
        drained, self._drained = self._drained, None
        skip_to_wait = (
            drained[1]
            if timeout > 0
            and drained is not None
            and drained[0] == signal.version
            and self._wakeups is not None
            and self._wakeups.listening
            else None
        )
        while True:
            seen = signal.version
            if skip_to_wait is not None:
                claimed_at, skip_to_wait = skip_to_wait, None
            else:
                claimed_at = self._clock.now()
                deliveries = await self._claim(queue, max_messages, claimed_at)
                if len(deliveries) < max_messages:
                    self._drained = (seen, claimed_at)
                if deliveries:
                    self._pause = _FIRST_PAUSE
                    if len(deliveries) == max_messages:
                        signal.fire()  # a whole batch: more may be waiting for another receiver
                    return deliveries
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await self._wait(queue, signal, seen, remaining, claimed_at)

    async def _claim(self, queue: Queue, max_messages: int, now: float) -> list[Delivery]:
        return await finish_even_if_cancelled(self._claim_rows(queue, max_messages, now), self.nack)

    async def _claim_rows(self, queue: Queue, max_messages: int, now: float) -> list[Delivery]:
        token = random.getrandbits(63)
        claim = queue.claim
        try:
            rows = await claim(self.name, now, now + self.lease_seconds, token, max_messages)
        except Exception as exc:
            rows = await self._retry(
                exc, lambda: claim(self.name, now, now + self.lease_seconds, token, max_messages)
            )
        decode = _decode_headers
        return [
            Delivery(Envelope(body, decode(headers)), (row_id, token), count)
            for row_id, _priority, headers, body, count in rows
        ]

    async def _wait(
        self, queue: Queue, signal: Signal, seen: int, remaining: float, claimed_at: float
    ) -> None:
        """Sleep until a message may be due: a wake-up, the next due time, or the next poll."""
        # Asked as of the claim's time, so that a message that fell due since is not overlooked.
        next_due = await self._call(lambda: queue.next_due(self.name, claimed_at))
        now = self._clock.now()
        if next_due is not None and next_due <= now:
            # Something fell due after the claim looked: look again almost at once.
            pause = _FIRST_PAUSE
        else:
            listening = False
            if self._listening and self._wakeups is not None:
                await self._wakeups.ensure_listening()
                listening = self._wakeups.listening
            if listening:
                # Every send is notified: a poll only guards against a notification lost on the way.
                pause = max(self.poll_interval, _LISTENING_POLL_SECONDS)
            else:
                pause = min(self._pause, self.poll_interval)
                self._pause = min(self._pause * 2, self.poll_interval)
        waiters: list[asyncio.Future[Any]] = [signal.changed_since(seen)]
        if next_due is not None and next_due > now:
            waiters.append(asyncio.ensure_future(self._clock.sleep(next_due - now)))
        try:
            await asyncio.wait(waiters, timeout=min(remaining, pause), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # Settling

    @staticmethod
    def _receipts(deliveries: Sequence[Delivery]) -> tuple[list[int], list[int]]:
        ids = [delivery.receipt[0] for delivery in deliveries]
        tokens = list({delivery.receipt[1] for delivery in deliveries})
        return ids, tokens

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        queue = self._connected_queue()
        ids, tokens = self._receipts(deliveries)
        try:
            await queue.delete(ids, tokens)
        except Exception as exc:
            await self._retry(exc, lambda: queue.delete(ids, tokens))

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        if not deliveries:
            return
        queue = self._connected_queue()
        ids, tokens = self._receipts(deliveries)
        visible_at = self._clock.now() + max(delay, 0.0)
        await self._call(lambda: queue.release(self.name, ids, tokens, visible_at))
        self._signal.fire()

    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        if not deliveries:
            return
        queue = self._connected_queue()
        ids, tokens = self._receipts(deliveries)
        until = self._clock.now() + seconds
        await self._call(lambda: queue.extend(ids, tokens, until))

    async def purge(self) -> None:
        queue = self._connected_queue()
        await self._call(lambda: queue.purge(self.name))

    async def depth(self) -> int:
        queue = self._connected_queue()
        return await self._call(lambda: queue.depth(self.name))

    # Plumbing

    def _connected_queue(self) -> Queue:
        if self._queue is None or self._database is None:
            raise TidingsError(f"{self!r} is not connected; call connect() (or start the app) first")
        return self._queue

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one operation; a dropped connection is retried once on a fresh one, then reported."""
        try:
            return await operation()
        except Exception as exc:
            return await self._retry(exc, operation)

    async def _retry(self, failure: Exception, operation: Callable[[], Awaitable[T]]) -> T:
        queue = self._connected_queue()
        if not queue.is_connection_lost(failure):
            raise failure
        try:
            return await operation()
        except Exception as exc:
            if queue.is_connection_lost(exc):
                raise self._unavailable(exc) from exc
            raise

    def _unavailable(self, exc: BaseException) -> ChannelUnavailable:
        database = self.database
        return DatabaseUnavailable(
            f"SqlChannel {self.name!r} lost the database {database.safe_url}: {exc}",
            url=database.safe_url,
            channel=self.name,
        )
