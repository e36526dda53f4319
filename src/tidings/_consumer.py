"""The consumer: receives from channels and runs each message's endpoint, at least once.

A delivery is acknowledged only after its handler returned and what it sent was flushed. Failures go
to the app's failure policy (retries, dead letter); without one, the message goes back to its channel
with a growing delay. On stop, receiving ends first, in-flight handlers get the drain time to finish,
and whatever is unfinished is given back without costing an attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from tidings import headers as h
from tidings._context import _UNDECODED, MessageContext, handling_scope
from tidings.exceptions import EndpointNotFound, MessageExpired
from tidings.middleware.base import Outgoing

if TYPE_CHECKING:
    from tidings._app import App
    from tidings.channels.base import Channel, Delivery

__all__ = [
    "DEAD_LETTERED",
    "OUTCOME",
    "RETRIED",
    "RUN_AGAIN",
    "Consumer",
    "ConsumerStats",
    "Failure",
    "FailurePolicy",
]

logger = logging.getLogger("tidings.consumer")

_ROUTING_SLIP: Final = h.ROUTING_SLIP
_EXPIRES_AT: Final = h.EXPIRES_AT
_ENDPOINT: Final = h.ENDPOINT
#: Key in `MessageContext.scope` where a middleware records why it skipped the handler (a duplicate).
OUTCOME: Final = "tidings.outcome"
#: What a failure policy did with a failed delivery that may now be acked.
RETRIED: Final = "retried"
DEAD_LETTERED: Final = "dead-lettered"
#: A failure policy's answer: handle the delivery again at once, in process (an instant retry).
RUN_AGAIN: Final = "run again"
_IDLE_RECEIVE_TIMEOUT: Final = 1.0
#: A channel whose receive fails (its broker is gone) is tried again after these pauses, doubling.
_RECEIVE_RETRY_FIRST: Final = 0.5
_RECEIVE_RETRY_MAX: Final = 30.0
_EMPTY_CHECK_TIMEOUT: Final = 0.05
_MAX_FALLBACK_DELAY: Final = 60.0
#: A worker lets the event loop run other tasks at least once per this many jobs.
_YIELD_EVERY: Final = 32
#: How long acks may wait to go out together while the consumer is busy.
_ACK_LINGER: Final = 0.02


@dataclass
class ConsumerStats:
    """What a consumer run did."""

    handled: int = 0
    #: Failed handlings sent back to their channel for a delayed retry.
    retried: int = 0
    #: Messages put in the dead-letter store (their deliveries were acked).
    dead_lettered: int = 0
    #: Messages skipped because their endpoint had already handled them.
    duplicates: int = 0
    #: Handlings that raised (every attempt counts) and messages that failed before a handler.
    failed: int = 0
    expired: int = 0
    relayed: int = 0
    #: Age in seconds of the oldest message in the last relayed batch (outbox lag), and the worst seen.
    relay_lag: float = 0.0
    max_relay_lag: float = 0.0
    #: Given back to the channel on stop, unhandled, without costing an attempt.
    returned: int = 0
    stopped_because: str = ""
    errors: list[BaseException] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    """A handling that failed, as a failure policy sees it."""

    app: App
    channel: Channel
    delivery: Delivery
    error: Exception
    #: None when the message failed before reaching a handler (unknown endpoint, expired).
    context: MessageContext | None
    #: How often the handling already ran again at once (instant retries).
    instant_retries: int


class FailurePolicy:
    """Decides what happens to a delivery whose handling failed; the app's retries replace it.

    The default gives the message back to its channel with an exponential delay, so nothing is lost.
    """

    async def handle_failure(self, failure: Failure) -> str | None:
        """Deal with a failed handling.

        Returns `RUN_AGAIN` to handle the delivery again at once, `RETRIED` or `DEAD_LETTERED` when
        it was taken care of and may be acked, or None when it went back to its channel.
        """
        delivery = failure.delivery
        delay = min(2.0 ** (delivery.delivery_count - 1), _MAX_FALLBACK_DELAY)
        logger.error(
            "endpoint %s failed on message %s from channel %s; back to the channel in %.0fs",
            delivery.envelope.endpoint, delivery.envelope.message_id, failure.channel.name, delay,
            exc_info=failure.error,
        )  # fmt: skip
        await failure.channel.nack([delivery], delay=delay)
        return None


#: One delivery to handle, or a list of routing-slip deliveries to relay together; a plain tuple,
#: because one is made per message.
_Job = tuple["Channel", "Delivery | list[Delivery]"]


def _deliveries(job: _Job) -> list[Delivery]:
    work = job[1]
    return work if isinstance(work, list) else [work]


class _Acker:
    """Acks in batches of up to `batch_size`.

    Acks gather while workers still have queued work (for at most `_ACK_LINGER` seconds) and while
    an earlier batch is in flight; they go out at once when the consumer has nothing else queued, so
    a quiet consumer acks each message straight away. A delayed ack costs nothing but a slightly
    longer lease: until it lands, the message stays leased to this consumer.
    """

    def __init__(self, channel: Channel, batch_size: int, queued: Callable[[], int]) -> None:
        self.channel = channel
        self.batch_size = batch_size
        self._queued = queued
        self._buffer: list[Delivery] = []
        self._flushing: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None

    def ack(self, delivery: Delivery) -> None:
        buffer = self._buffer
        buffer.append(delivery)
        if self._flushing is not None and not self._flushing.done():
            return  # the flush in flight takes this one next
        if len(buffer) >= self.batch_size or not self._queued():
            self._start_flush()
        elif self._linger is None:
            self._flush_later()

    def _flush_later(self) -> None:
        # Only called with no timer set: `ack` checks, and `_flush` runs after `_start_flush` cleared it.
        self._linger = asyncio.get_running_loop().call_later(_ACK_LINGER, self._start_flush)

    def _start_flush(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._buffer and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer, []
            try:
                await self.channel.ack(batch)
            except Exception:
                # The broker will redeliver these; handlers are protected by deduplication.
                logger.exception("acking %d messages on %r failed", len(batch), self.channel)
            if len(self._buffer) < self.batch_size and self._queued():
                break
        if self._buffer:
            self._flush_later()

    async def drain(self) -> None:
        self.batch_size = 0  # from now on, nothing waits
        self._start_flush()
        while self._flushing is not None and not self._flushing.done():
            await self._flushing


def _resident_memory_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1_048_576
    except OSError:  # not Linux: peak RSS is the best available figure
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Consumer:
    """Runs the endpoints of messages received from some channels."""

    def __init__(
        self,
        app: App,
        channels: Sequence[str],
        *,
        concurrency: int,
        batch_size: int,
        message_limit: int | None,
        time_limit: float | None,
        memory_limit_mb: float | None,
        stop_when_empty: bool,
        drain_timeout: float,
        raise_errors: bool,
        schedules: bool = True,
    ) -> None:
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        self.app = app
        self.channels = [app.channel(name) for name in channels]
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.message_limit = message_limit
        self.time_limit = time_limit
        self.memory_limit_mb = memory_limit_mb
        self._limited = message_limit is not None or memory_limit_mb is not None
        self.stop_when_empty = stop_when_empty
        self.drain_timeout = drain_timeout
        self.raise_errors = raise_errors
        self.run_schedules = schedules and bool(app.schedules)
        self.stats = ConsumerStats()
        self.failure_policy = app.failure_policy
        self._stopping = asyncio.Event()
        #: `_stopping.is_set()`, as a plain attribute for the workers' loop.
        self._stopped = False
        self._active = 0
        receivers = sum(channel.concurrent_receives for channel in self.channels)
        # Room for every receiver's batch (a receive waiting on a quiet channel holds its slots),
        # plus one batch waiting for the workers.
        self._capacity = concurrency + (receivers + 1) * batch_size
        #: Slots held for batches being received.
        self._reserved = 0
        self._receiving = dict.fromkeys((channel.name for channel in self.channels), 0)
        #: Finished jobs wake the receivers only once this few are left, not after every message.
        self._receive_below = self._capacity - batch_size
        self._slot_freed = asyncio.Event()
        self._queue: collections.deque[_Job] = collections.deque()
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        #: The job each worker is running, None while it waits.
        self._running: list[_Job | None] = [None] * concurrency
        self._waking = False
        self._workers: list[asyncio.Task[None]] = []
        queued = self._queue.__len__
        self._ackers = {channel.name: _Acker(channel, batch_size, queued) for channel in self.channels}
        self._empty = dict.fromkeys(self._ackers, False)
        #: Set while a channel's primary receiver brings full batches: its other receivers then
        #: receive too. On a quiet channel they wait, so that a wake-up costs one receive, not several.
        self._busy = {channel.name: asyncio.Event() for channel in self.channels}

    def stop(self, reason: str = "stopped") -> None:
        """Stop receiving and drain; safe to call from a signal handler."""
        if not self._stopping.is_set():
            self.stats.stopped_because = reason
            logger.info("consumer stopping (%s), draining in-flight handlers", reason)
            self._stopped = True
            self._stopping.set()
            self._slot_freed.set()  # receivers waiting for room see the stop

    async def run(self, *, handle_signals: bool = False) -> ConsumerStats:
        loop = asyncio.get_running_loop()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop, signal.Signals(signum).name)
        timer = None
        if self.time_limit is not None:
            timer = loop.call_later(self.time_limit, self.stop, "time limit")
        self._workers = [asyncio.ensure_future(self._worker(number)) for number in range(self.concurrency)]
        receivers = [
            asyncio.ensure_future(self._receive_loop(channel, primary=number == 0))
            for channel in self.channels
            for number in range(channel.concurrent_receives)
        ]
        heartbeats = [asyncio.ensure_future(self._heartbeat(channel)) for channel in self.channels]
        if self.run_schedules:
            from tidings._schedules import run_schedules

            heartbeats.append(
                asyncio.ensure_future(run_schedules(self.app, self.app.schedules, self.app.schedule_lock))
            )
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            # Receivers end once stopping; with no channel (schedules only), the stop signal ends the run.
            await asyncio.gather(*receivers, stopped)
        finally:
            for task in [*receivers, *heartbeats, stopped]:
                task.cancel()
            await asyncio.gather(*receivers, *heartbeats, stopped, return_exceptions=True)
            await self._drain()
            if timer is not None:
                timer.cancel()
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
        if self.raise_errors and self.stats.errors:
            raise self.stats.errors[0]
        return self.stats

    # -- receiving --------------------------------------------------------------------------------

    async def _reserve_slots(self) -> int:
        # Batches wait ahead of the workers, and a receive waits until a whole batch fits: receives
        # stay full batches (one round trip per batch, not per few messages) and the workers have
        # work to go on with while the next batch is on the wire. What waits keeps its lease (see
        # _heartbeat) and goes back on stop. Slots are reserved for the receive's whole batch, so
        # concurrent receives never take more than fits.
        while self._active + self._reserved > self._receive_below and not self._stopping.is_set():
            self._slot_freed.clear()
            await self._slot_freed.wait()
        reserved = min(self.batch_size, self._capacity - self._active - self._reserved)
        self._reserved += reserved
        return reserved

    async def _receive_loop(self, channel: Channel, *, primary: bool = True) -> None:
        timeout = _EMPTY_CHECK_TIMEOUT if self.stop_when_empty else _IDLE_RECEIVE_TIMEOUT
        stopping = asyncio.ensure_future(self._stopping.wait())
        receiving: asyncio.Future[list[Delivery]] | None = None
        failures = 0
        try:
            while not self._stopping.is_set():
                reserved = await self._reserve_slots()
                if self._stopping.is_set():
                    self._reserved -= reserved
                    break
                self._receiving[channel.name] += 1
                try:
                    receiving = asyncio.ensure_future(channel.receive(reserved, timeout))
                    await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    self._receiving[channel.name] -= 1
                    self._reserved -= reserved
                if not receiving.done():
                    break
                failure = receiving.exception()
                if failure is not None:
                    receiving = None
                    pause = min(_RECEIVE_RETRY_FIRST * 2**failures, _RECEIVE_RETRY_MAX)
                    failures += 1
                    logger.error(
                        "receiving from %r failed (%s: %s); trying again in %.1fs",
                        channel, type(failure).__name__, failure, pause,
                    )  # fmt: skip
                    await asyncio.wait({stopping}, timeout=pause)
                    continue
                failures = 0
                deliveries = receiving.result()
                receiving = None
                if primary and len(deliveries) >= reserved:
                    self._busy[channel.name].set()
                if deliveries:
                    self._empty[channel.name] = False
                    self._dispatch(channel, deliveries)
                elif not primary and not self.stop_when_empty:
                    await self._until_busy(channel, stopping)
                elif self.stop_when_empty:
                    if not primary:
                        break  # the primary receiver alone decides that the channel is empty
                    if not self._receiving[channel.name]:
                        # Not while another receive on this channel may still bring messages.
                        self._empty[channel.name] = True
                        if not self._active and all(self._empty.values()):
                            self.stop("empty")
        finally:
            stopping.cancel()
            if receiving is not None:
                await self._abandon(channel, receiving)

    async def _until_busy(self, channel: Channel, stopping: asyncio.Future[Any]) -> None:
        """Wait until the channel's primary receiver brings a full batch again (or the stop)."""
        busy = self._busy[channel.name]
        busy.clear()
        waiting = asyncio.ensure_future(busy.wait())
        try:
            await asyncio.wait({stopping, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()

    @staticmethod
    async def _abandon(channel: Channel, receiving: asyncio.Future[list[Delivery]]) -> None:
        """Stop a receive in progress; anything it leased after all goes straight back."""
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
        if not receiving.cancelled() and receiving.exception() is None and receiving.result():
            await channel.nack(receiving.result())

    def _dispatch(self, channel: Channel, deliveries: list[Delivery]) -> None:
        queue = self._queue
        queued = len(queue)
        relays = []
        for delivery in deliveries:
            if _ROUTING_SLIP in delivery.envelope.headers:
                relays.append(delivery)
            else:
                queue.append((channel, delivery))
        if relays:
            queue.append((channel, relays))
        self._active += len(queue) - queued
        if not self._waking:
            self._wake_one()

    def _wake_one(self) -> None:
        # At most one worker is woken at a time and a working worker wakes the next only while work
        # remains: handlers that never suspend run back to back in one worker, handlers that wait on
        # I/O still spread over every worker.
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._waking = True
                return

    async def _worker(self, number: int) -> None:
        """One of `concurrency` long-lived workers; cheaper than a task per message."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        running = self._running
        ran = 0
        while True:
            if ran == _YIELD_EVERY:
                # Handlers that never suspend would otherwise keep the loop until the queue is
                # empty, with the next receive and the acks waiting behind them.
                ran = 0
                await asyncio.sleep(0)
            # Once stopping, nothing new starts: what waits in the queue goes back to its channel.
            while not queue or self._stopped:
                waiter = loop.create_future()
                self._idle.append(waiter)
                await waiter
                self._waking = False
            job = queue.popleft()
            ran += 1
            if queue and not self._waking:
                self._wake_one()
            running[number] = job
            channel, work = job
            try:
                if isinstance(work, list):
                    await self._relay(channel, work)
                else:
                    await self._process(channel, work)
            finally:
                running[number] = None
                self._active -= 1
                if self._active + self._reserved <= self._receive_below:
                    self._slot_freed.set()

    # -- handling ---------------------------------------------------------------------------------

    async def _process(self, channel: Channel, delivery: Delivery) -> None:
        app = self.app
        headers = delivery.envelope.headers
        instant_retries = 0
        while True:
            context: MessageContext | None = None
            try:
                expires_at = headers.get(_EXPIRES_AT)
                if expires_at is not None and float(expires_at) <= app.clock.now():
                    raise MessageExpired(
                        f"message {delivery.envelope.message_id} expired before it was received",
                        envelope=delivery.envelope,
                    )
                endpoint = app.endpoints.get(headers.get(_ENDPOINT, ""))
                if endpoint is None:
                    raise EndpointNotFound(
                        f"message {delivery.envelope.message_id} on channel '{channel.name}' is for "
                        f"endpoint '{headers.get(h.ENDPOINT)}', which app '{app.name}' does not have "
                        f"(renamed or removed handler?)",
                        envelope=delivery.envelope,
                    )
                context = MessageContext(
                    app, endpoint, headers, _UNDECODED, delivery, channel.name, self.raise_errors
                )
                # What the handler sends waits here and goes out only if the handling succeeds.
                pending: list[Outgoing] = []
                token = handling_scope.set((context, pending))
                try:
                    assert endpoint.pipeline is not None
                    await endpoint.pipeline(context)
                finally:
                    handling_scope.reset(token)
                if pending:
                    await app.dispatcher.flush(pending)
                duplicate = context._scope is not None and OUTCOME in context._scope
            except asyncio.CancelledError:
                # Cut off by the drain deadline: back to the channel, not counted as a failure.
                self.stats.returned += 1
                await channel.nack([delivery])
                raise
            except MessageExpired as error:
                self.stats.expired += 1
                if app.expired_messages == "dead-letter":
                    await self._failed(channel, delivery, error, None, 0)
                    return
                logger.info("dropped expired message %s", delivery.envelope.message_id)
                self._ackers[channel.name].ack(delivery)
                return
            except Exception as error:
                if await self._failed(channel, delivery, error, context, instant_retries):
                    instant_retries += 1
                    continue
                return
            break
        self._ackers[channel.name].ack(delivery)
        if duplicate:
            self.stats.duplicates += 1
        else:
            self.stats.handled += 1
            if self._limited:
                self._check_limits()

    async def _failed(
        self,
        channel: Channel,
        delivery: Delivery,
        error: Exception,
        context: MessageContext | None,
        instant_retries: int,
    ) -> bool:
        """Let the failure policy deal with a failed handling; True to run the handling again now."""
        self.stats.failed += 1
        if self.raise_errors:
            logger.error(
                "endpoint %s failed on message %s from channel %s: %s",
                delivery.envelope.endpoint, delivery.envelope.message_id, channel.name, error,
            )  # fmt: skip
            self.stats.errors.append(error)
            await channel.nack([delivery])
            self.stop("handler error")
            return False
        try:
            failure = Failure(self.app, channel, delivery, error, context, instant_retries)
            outcome = await self.failure_policy.handle_failure(failure)
        except Exception:
            logger.exception(
                "failure policy failed on %s; message %s goes back to its channel",
                error, delivery.envelope.message_id,
            )  # fmt: skip
            await channel.nack([delivery], delay=_MAX_FALLBACK_DELAY)
            return False
        if outcome == RUN_AGAIN:
            return True
        if outcome is not None:
            self._ackers[channel.name].ack(delivery)
            if outcome == RETRIED:
                self.stats.retried += 1
            else:
                self.stats.dead_lettered += 1
        return False

    async def _relay(self, channel: Channel, deliveries: list[Delivery]) -> None:
        """Forward routing-slip messages to their next channel; ack only after the target took them."""
        by_target: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            target = delivery.envelope.headers[h.ROUTING_SLIP].partition(",")[0]
            by_target.setdefault(target, []).append(delivery)
        for target, batch in by_target.items():
            forwarded = []
            for delivery in batch:
                rest = delivery.envelope.headers[h.ROUTING_SLIP].partition(",")[2]
                forwarded.append(delivery.envelope.with_headers({h.ROUTING_SLIP: rest or None}))
            try:
                await self.app.channel(target).send(forwarded)
            except asyncio.CancelledError:
                await channel.nack(batch)
                raise
            except Exception:
                logger.exception(
                    "relaying %d messages from %s to %s failed; retrying later",
                    len(batch),
                    channel.name,
                    target,
                )
                await channel.nack(batch, delay=1.0)
                continue
            acker = self._ackers[channel.name]
            for delivery in batch:
                acker.ack(delivery)
            self.stats.relayed += len(batch)
            self._note_relay_lag(batch)
            if self._limited:
                self._check_limits()

    def _note_relay_lag(self, batch: list[Delivery]) -> None:
        stamps = [float(d.envelope.headers.get(h.TIMESTAMP, "inf")) for d in batch]
        oldest = min(stamps)
        if oldest != float("inf"):
            lag = max(self.app.clock.now() - oldest, 0.0)
            self.stats.relay_lag = lag
            self.stats.max_relay_lag = max(self.stats.max_relay_lag, lag)

    def _check_limits(self) -> None:
        done = self.stats.handled + self.stats.relayed
        if self.message_limit is not None and done >= self.message_limit:
            self.stop("message limit")
        if (
            self.memory_limit_mb is not None
            and done % 100 == 0
            and _resident_memory_mb() > self.memory_limit_mb
        ):
            self.stop("memory limit")

    async def _heartbeat(self, channel: Channel) -> None:
        """Extend the leases of deliveries still being handled, so long handlers keep them."""
        interval = channel.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            held = [*filter(None, self._running), *self._queue]
            leased = [d for job in held if job[0] is channel for d in _deliveries(job)]
            if leased:
                try:
                    await channel.extend_lease(leased, channel.lease_seconds)
                except Exception:
                    logger.exception("extending leases on %r failed", channel)

    async def _drain(self) -> None:
        # Work received but not started goes straight back; it never cost an attempt.
        while self._queue:
            job = self._queue.popleft()
            self._active -= 1
            deliveries = _deliveries(job)
            self.stats.returned += len(deliveries)
            await job[0].nack(deliveries)
        self._receive_below = self._capacity  # from now on, every finished job is news
        started = time.monotonic()
        deadline = started + self.drain_timeout
        while any(self._running) and time.monotonic() < deadline:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), deadline - time.monotonic())
        unfinished = sum(job is not None for job in self._running)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if unfinished or self.stats.stopped_because not in ("", "empty"):
            logger.info(
                "drained in %.2fs; %d unfinished handlers gave their messages back",
                time.monotonic() - started,
                unfinished,
            )
        await asyncio.gather(*(acker.drain() for acker in self._ackers.values()))
