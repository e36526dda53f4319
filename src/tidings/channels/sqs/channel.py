"""A queue channel on Amazon SQS (or any SQS-compatible server), standard or FIFO.

How messages move (see `_codec` for how an envelope is laid out as an SQS message):

- `connect` finds the queue by name and creates it when missing (standard, or FIFO when `fifo=True`;
  retention 14 days, the longest SQS allows). If the queue disappears later (a test server
  restarted), the next operation creates it again.
- `send` sends batches of 10 (`SendMessageBatch`, smaller when the messages are large), several
  batches in parallel. A message due later gets `DelaySeconds`: its delay rounded *down* to whole
  seconds, capped at `max_hop_delay` (SQS's own cap is 15 minutes).
- `receive` long-polls (`WaitTimeSeconds` from the timeout, at most 20 s), 10 messages per call,
  with further calls in parallel when more are wanted and the first came back full. Each message
  is leased by its visibility timeout (`lease_seconds`, rounded up). A message received before its
  `tidings.deliver-at` is never handed out early:
    * due within 2 s (the rounding of `DelaySeconds` leaves less than a second; the rest is clock
      skew): it is held by the channel, its visibility extended to cover the wait, and handed out
      by a receive once due. That is how a 1.5 s delay arrives at 1.5 s and not at 1 or 2 s.
    * due later (a delay longer than `max_hop_delay`): a *re-delay hop*. On a standard queue the
      message is sent again unchanged with the remaining delay (capped again) and the received
      copy deleted; on a FIFO queue its visibility is set to the remaining delay instead (see
      below). Either way no delay lives in worker memory.
- `ack` deletes (`DeleteMessageBatch`), `nack(delay)` sets the visibility timeout to the delay
  (0 to give back at once), `extend_lease` sets it to the new lease (`ChangeMessageVisibilityBatch`);
  each in batches of 10 sent in parallel. SQS caps visibility at 12 hours from the receive, so a
  nack delay that would pass that cap re-sends the message with a `tidings.deliver-at` instead.
- `delivery_count` is SQS's `ApproximateReceiveCount`.
- A receive that times out, or is cancelled, while its long poll is on the wire leaves the poll
  running: what it brings is kept (leased) for the next receive, and `close` gives it back.
- A server that cannot be reached is asked again with backoff for `reconnect_timeout` seconds
  (after botocore's own quick retries) before an operation raises `ChannelUnavailable`; the
  operation itself is retried once the server answers. `connect` does not wait that long.
  Retrying a send whose reply was lost may store a message twice, which deduplication absorbs
  (FIFO queues drop the copy themselves).

Not natively possible, and how the channel says so:

- Priority: SQS has no priority order, so `capabilities.priority` is False and an app refuses a
  `@priority` handler on this channel at start-up.
- FIFO queues forbid per-message `DelaySeconds`. A delayed message on a FIFO queue is sent at once
  and, when received early, made invisible until due (so its receive count grows by one per
  12-hour stretch of delay). While it waits it holds back the messages after it in its message
  group, as a nack with delay does: that is what ordering within a group means on SQS. The
  message group is the `tidings.ordering-key` header (configurable), else the endpoint id; the
  deduplication id is the message id, endpoint and attempt (see `_codec.deduplication_id`).
  SQS may return several messages of one group in one batch; the channel hands out one per group
  at a time and the next when that one is acked (a nack gives the rest back to SQS), so that
  concurrent workers never handle a group out of order (see `_waiting.GroupLines`).
- TTL is enforced by the consumer when the message is received, as on every channel.
- `purge` uses `PurgeQueue`, which AWS allows once a minute and carries out within a minute; while
  one is in progress, the visible messages are received and deleted instead.
- `depth` adds SQS's approximate counts (visible, in flight, delayed), exact on test servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, final

from tidings import headers as h
from tidings._clock import Clock, SystemClock
from tidings._message import Envelope
from tidings.channels.base import Capabilities, Channel, ChannelEnvironment, Delivery
from tidings.exceptions import ChannelUnavailable, ConfigurationError, DriverMissing, PublishFailed

from ._codec import ATTRIBUTE_NAMES, decode, deduplication_id, encode, message_group_id
from ._waiting import GroupLines, Held, Waiting

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["ORDERING_KEY", "SqsChannel"]

logger = logging.getLogger("tidings.channels.sqs")

#: The header whose value is a FIFO message's group (messages of one group keep their order).
ORDERING_KEY: Final = h.ORDERING_KEY

#: SQS limits: entries per batch call, bytes per batch, long-poll wait, visibility, one-hop delay.
_BATCH: Final = 10
_BATCH_BYTES: Final = 256 * 1024
_LONGEST_POLL: Final = 20
_LONGEST_VISIBILITY: Final = 43_200
_LONGEST_DELAY: Final = 900
#: A message received at most this early is held by the channel; earlier ones take another hop.
_HOLD_LIMIT: Final = 2.0
#: How long `close` waits for a long poll still on the wire before cutting it off.
_CLOSE_WAIT: Final = 2.0
#: Backoff between calls while the server cannot be reached (botocore retries briefly before that).
_FIRST_BACKOFF: Final = 0.1
_MAX_BACKOFF: Final = 2.0
#: Retries of batch entries that SQS failed on its side.
_ENTRY_RETRIES: Final = 2
_RETENTION: Final = "1209600"
_MISSING_QUEUE: Final = frozenset({"QueueDoesNotExist", "NonExistentQueue"})
_STALE_RECEIPT: Final = frozenset(
    {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight", "InvalidReceiptHandle"}
)
_QUEUE_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,80}")
_COUNTS: Final = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]


class _Receipt:
    """What acking, nacking or extending a delivery needs: its receipt handle and when it came."""

    __slots__ = ("handle", "received_at")

    def __init__(self, handle: str, received_at: float) -> None:
        self.handle = handle
        self.received_at = received_at


def _seconds(value: float) -> int:
    """Whole seconds for SQS, rounded up so that nothing comes back early."""
    return min(_LONGEST_VISIBILITY, max(0, math.ceil(value)))


@final
class SqsChannel(Channel):
    """A queue channel on SQS: long polling, batches of 10, visibility timeout as the lease.

    Delays of any length (re-delay hops past `max_hop_delay`), FIFO queues with message groups and
    deduplication ids; no priority order. Credentials come from the keyword arguments or, when
    they are not given, from botocore's usual chain (environment, config files, instance roles).
    """

    capabilities = Capabilities(delay=True, priority=False, max_delay=None, ordered=False)

    def __init__(
        self,
        name: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        lease_seconds: float = 30.0,
        fifo: bool = False,
        max_hop_delay: int = _LONGEST_DELAY,
        queue_name: str | None = None,
        group_header: str = ORDERING_KEY,
        create_queue: bool = True,
        queue_attributes: Mapping[str, str] | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        max_connections: int = 32,
        reconnect_timeout: float = 30.0,
    ) -> None:
        super().__init__(name, lease_seconds=lease_seconds)
        try:
            from . import _driver
        except ModuleNotFoundError as error:
            if error.name is not None and error.name.split(".")[0] in {"aiobotocore", "botocore"}:
                raise DriverMissing("SqsChannel", "sqs", "aiobotocore") from error
            raise
        self._driver: ModuleType = _driver
        if not isinstance(max_hop_delay, int) or not 1 <= max_hop_delay <= _LONGEST_DELAY:
            raise ValueError(f"max_hop_delay is whole seconds from 1 to {_LONGEST_DELAY}: {max_hop_delay!r}")
        if queue_name is None:
            queue_name = name.replace(".", "-") + (".fifo" if fifo else "")
        base = queue_name.removesuffix(".fifo")
        if fifo != queue_name.endswith(".fifo") or not _QUEUE_NAME.fullmatch(base) or len(queue_name) > 80:
            raise ValueError(
                f"SQS queue name {queue_name!r} is not valid: up to 80 letters, digits, '-' and '_', "
                f"ending in '.fifo' exactly when fifo=True (pass queue_name= to choose one)"
            )
        self.endpoint_url = endpoint_url
        self.region = region
        self.fifo = fifo
        self.max_hop_delay = max_hop_delay
        self.queue_name = queue_name
        self.group_header = group_header
        self.create_queue = create_queue
        self.queue_attributes = dict(queue_attributes or {})
        self.max_connections = max_connections
        self.reconnect_timeout = reconnect_timeout
        if fifo:
            self.capabilities = Capabilities(delay=True, priority=False, max_delay=None, ordered=True)
        self._credentials = {
            key: value
            for key, value in (
                ("aws_access_key_id", aws_access_key_id),
                ("aws_secret_access_key", aws_secret_access_key),
                ("aws_session_token", aws_session_token),
            )
            if value is not None
        }
        self._visibility = max(1, _seconds(lease_seconds))
        self._clock: Clock = SystemClock()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._queue_url = ""
        self._closing = False
        #: Received messages not handed out yet (see `_waiting`).
        self._held = Held()
        self._lines = GroupLines()
        #: Set when messages join `_held` outside a poll (the next of a FIFO group).
        self._released = asyncio.Event()
        #: The long poll on the wire, shared by receives until it returns.
        self._poll: asyncio.Task[None] | None = None
        self._system_attributes = ["ApproximateReceiveCount"] + (["MessageGroupId"] if fifo else [])

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"SqsChannel({self.name!r}, queue={self.queue_name!r}{where})"

    # -- connection -------------------------------------------------------------------------------

    async def connect(self, environment: ChannelEnvironment) -> None:
        self._clock = environment.clock
        self._closing = False
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            self._driver.open_client(
                region=self.region,
                endpoint_url=self.endpoint_url,
                credentials=self._credentials,
                max_connections=self.max_connections,
            )
        )
        try:
            self._queue_url = await self._declare(client)
        except BaseException as error:
            await stack.aclose()
            if isinstance(error, self._driver.UNREACHABLE_ERRORS):
                raise self._unavailable(error) from error
            raise
        self._stack, self._client = stack, client

    async def _declare(self, client: Any) -> str:
        try:
            reply = await client.get_queue_url(QueueName=self.queue_name)
            return str(reply["QueueUrl"])
        except self._driver.ClientError as error:
            if self._driver.error_code(error) not in _MISSING_QUEUE:
                raise
            if not self.create_queue:
                raise ConfigurationError(
                    f"SQS queue {self.queue_name!r} does not exist; create it, or let the channel "
                    f"create it (create_queue=True)"
                ) from error
        attributes = {"VisibilityTimeout": str(self._visibility), "MessageRetentionPeriod": _RETENTION}
        if self.fifo:
            attributes["FifoQueue"] = "true"
        attributes.update(self.queue_attributes)
        reply = await client.create_queue(QueueName=self.queue_name, Attributes=attributes)
        logger.info("created SQS queue %s", self.queue_name)
        return str(reply["QueueUrl"])

    async def close(self) -> None:
        self._closing = True
        poll, self._poll = self._poll, None
        if poll is not None:
            await asyncio.wait((poll,), timeout=_CLOSE_WAIT)
            if not poll.done():
                # Whatever it would have brought comes back when its visibility timeout ends.
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)
        kept = [waiting.delivery for waiting in self._held.drain() + self._lines.drain()]
        if kept and self._client is not None:
            with contextlib.suppress(Exception):
                await self._change_visibility(kept, 0)
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _connected(self) -> Any:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not connected; call connect() first")
        return self._client

    def _unavailable(self, error: BaseException) -> ChannelUnavailable:
        where = self.endpoint_url or f"region {self.region}"
        return ChannelUnavailable(
            f"SQS at {where} cannot be reached ({error}); check the endpoint and the network",
            channel=self.name,
        )

    async def _call(self, operation: str, **parameters: Any) -> Any:
        """Call SQS on this channel's queue, riding out a lost server for `reconnect_timeout`.

        A queue that vanished (a test server restarted) is created again, once per call.
        """
        client = self._connected()
        deadline: float | None = None
        recreated = False
        while True:
            try:
                return await getattr(client, operation)(QueueUrl=self._queue_url, **parameters)
            except self._driver.UNREACHABLE_ERRORS as error:
                deadline = deadline or asyncio.get_running_loop().time() + self.reconnect_timeout
                await self._wait_until_reachable(client, error, deadline)
            except self._driver.ClientError as error:
                if recreated or not self.create_queue or self._driver.error_code(error) not in _MISSING_QUEUE:
                    raise
                logger.warning("SQS queue %s is gone; creating it again", self.queue_name)
                self._queue_url = await self._declare(client)
                recreated = True

    async def _wait_until_reachable(self, client: Any, error: BaseException, deadline: float) -> None:
        """Return once SQS answers again; raise `ChannelUnavailable` if it has not by `deadline`.

        botocore has retried already. The server may be restarting, so it is asked again with
        backoff, by a read that can be cut off at the deadline without losing anything: cutting
        off the operation itself could leave a long poll's messages leased to nobody.
        """
        loop = asyncio.get_running_loop()
        backoff = _FIRST_BACKOFF
        while not self._closing and loop.time() + backoff < deadline:
            logger.warning("SQS for %r cannot be reached (%s); retrying", self, error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
            try:
                async with asyncio.timeout_at(deadline):
                    await client.get_queue_attributes(QueueUrl=self._queue_url, AttributeNames=["QueueArn"])
            except self._driver.ClientError:
                return  # it answered, if only to say the queue is gone
            except self._driver.UNREACHABLE_ERRORS as still_down:
                error = still_down
            else:
                return
        raise self._unavailable(error) from error

    # -- sending ----------------------------------------------------------------------------------

    async def send(self, envelopes: Sequence[Envelope]) -> None:
        self._connected()
        if not envelopes:
            return
        now = self._clock.now()
        fifo, longest_hop, group_header = self.fifo, self.max_hop_delay, self.group_header
        entries: list[dict[str, Any]] = []
        sizes: list[int] = []
        for number, envelope in enumerate(envelopes):
            body, attributes, size = encode(envelope)
            entry: dict[str, Any] = {"Id": str(number), "MessageBody": body}
            if attributes:
                entry["MessageAttributes"] = attributes
            if fifo:
                entry["MessageGroupId"] = message_group_id(envelope, group_header)
                entry["MessageDeduplicationId"] = deduplication_id(envelope)
            else:
                deliver_at = envelope.headers.get(h.DELIVER_AT)
                # Rounded down: the remaining fraction of a second is held on receive.
                if deliver_at is not None and (delay := int(float(deliver_at) - now)) > 0:
                    entry["DelaySeconds"] = min(delay, longest_hop)
            entries.append(entry)
            sizes.append(size)
        refused = await self._send_entries(entries, sizes)
        if refused:
            reasons = sorted({reason for _, reason in refused})
            raise PublishFailed(
                f"SQS did not take {len(refused)} of {len(envelopes)} messages for queue "
                f"{self.queue_name!r}: {'; '.join(reasons)}",
                channel=self.name,
                envelopes=[envelopes[number] for number, _ in refused],
            )

    async def _send_entries(self, entries: list[dict[str, Any]], sizes: list[int]) -> list[tuple[int, str]]:
        """Send entries in parallel batches; the (index, reason) of every entry SQS did not take."""
        batches: list[list[dict[str, Any]]] = []
        batch: list[dict[str, Any]] = []
        total = 0
        for entry, size in zip(entries, sizes, strict=True):
            if batch and (len(batch) == _BATCH or total + size > _BATCH_BYTES):
                batches.append(batch)
                batch, total = [], 0
            batch.append(entry)
            total += size
        batches.append(batch)
        results = await asyncio.gather(
            *(self._send_batch(batch) for batch in batches), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        unreachable = [result for result in results if isinstance(result, ChannelUnavailable)]
        if len(unreachable) == len(results):
            raise unreachable[0]  # nothing was sent: the server is the problem, not the messages
        refused: list[tuple[int, str]] = []
        for batch, result in zip(batches, results, strict=True):
            if isinstance(result, BaseException):
                refused += [(int(entry["Id"]), str(result)) for entry in batch]
            else:
                refused += result
        return refused

    async def _send_batch(self, batch: list[dict[str, Any]]) -> list[tuple[int, str]]:
        refused: list[tuple[int, str]] = []
        for retry in range(_ENTRY_RETRIES + 1):
            reply = await self._call("send_message_batch", Entries=batch)
            retryable: set[str] = set()
            for item in reply.get("Failed") or ():
                if item.get("SenderFault") or retry == _ENTRY_RETRIES:
                    refused.append((int(item["Id"]), f"{item.get('Code')}: {item.get('Message')}"))
                else:
                    retryable.add(item["Id"])
            if not retryable:
                break
            batch = [entry for entry in batch if entry["Id"] in retryable]
            await asyncio.sleep(0.05 * 2**retry)
        return refused

    # -- receiving --------------------------------------------------------------------------------

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        self._connected()
        if max_messages <= 0:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        first = True
        while not self._closing:
            ready = await self._take_due(max_messages)
            if ready:
                return ready
            remaining = deadline - loop.time()
            if remaining <= 0 and not first:
                return []
            poll = self._poll
            if poll is not None and poll.done():
                # Left by an earlier receive: what it failed with is this receive's error.
                self._poll = None
                if not poll.cancelled() and (error := poll.exception()) is not None:
                    raise error
                poll = None
            if poll is None:
                wait = min(_LONGEST_POLL, math.ceil(remaining)) if remaining > 0 else 0
                poll = self._poll = asyncio.ensure_future(self._fetch(max_messages, wait))
                poll.add_done_callback(_observe)
            pause: float | None = max(remaining, 0.0)
            if first and remaining <= 0:
                pause = None  # a receive without a timeout still looks once
            next_due = self._held.next_due()
            if next_due is not None:
                until_due = max(0.0, next_due - self._clock.now())
                pause = until_due if pause is None else min(pause, until_due)
            first = False
            # Waiting does not cancel the poll: if this receive gives up, the next one adopts it.
            await self._wait(poll, pause)
            if poll.done():
                if self._poll is poll:
                    self._poll = None
                if poll.cancelled():
                    return []
                error = poll.exception()
                if error is not None:
                    raise error
        return []

    async def _wait(self, poll: asyncio.Future[None], pause: float | None) -> None:
        if not self.fifo:
            await asyncio.wait((poll,), timeout=pause)
            return
        self._released.clear()
        released = asyncio.ensure_future(self._released.wait())
        try:
            await asyncio.wait((poll, released), timeout=pause, return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()

    async def _take_due(self, max_messages: int) -> list[Delivery]:
        if not self._held:
            return []
        due = self._held.pop_due(self._clock.now(), max_messages)
        if not due:
            return []
        lease_time = asyncio.get_running_loop().time() + self.lease_seconds / 2
        ready = [waiting.delivery for waiting in due if waiting.lease_end >= lease_time]
        if len(ready) < len(due):
            # Kept a while: renew the lease so that the consumer gets its full lease time.
            ready += await self._renew(
                [waiting.delivery for waiting in due if waiting.lease_end < lease_time]
            )
        return ready

    async def _renew(self, deliveries: list[Delivery]) -> list[Delivery]:
        failed = await self._change_visibility(deliveries, self._visibility)
        received_at = asyncio.get_running_loop().time()
        for number, delivery in enumerate(deliveries):
            if number not in failed:
                delivery.receipt.received_at = received_at
        if failed:
            await self._give_back_lines([deliveries[number] for number in failed])
        return [delivery for number, delivery in enumerate(deliveries) if number not in failed]

    async def _receive_messages(self, count: int, wait: int) -> list[dict[str, Any]]:
        parameters = {
            "VisibilityTimeout": self._visibility,
            "MessageAttributeNames": ATTRIBUTE_NAMES,
            "MessageSystemAttributeNames": self._system_attributes,
        }
        reply = await self._call(
            "receive_message", MaxNumberOfMessages=min(_BATCH, count), WaitTimeSeconds=wait, **parameters
        )
        messages: list[dict[str, Any]] = reply.get("Messages") or []
        if len(messages) < _BATCH or count <= _BATCH:
            return messages
        # The queue has more: fill the batch with parallel calls that do not wait.
        more = await asyncio.gather(
            *(
                self._call(
                    "receive_message",
                    MaxNumberOfMessages=min(_BATCH, count - first),
                    WaitTimeSeconds=0,
                    **parameters,
                )
                for first in range(_BATCH, count, _BATCH)
            )
        )
        for reply in more:
            messages += reply.get("Messages") or []
        return messages

    async def _fetch(self, count: int, wait: int) -> None:
        """One long poll; what it brings is held for a receive, or takes another hop."""
        messages = await self._receive_messages(count, wait)
        if not messages:
            return
        received_at = asyncio.get_running_loop().time()
        lease_end = received_at + self._visibility
        arrived: list[Waiting] = []
        lines = self._lines if self.fifo else None
        for message in messages:
            envelope = decode(message)
            attributes = message.get("Attributes") or {}
            count_text = attributes.get("ApproximateReceiveCount")
            delivery = Delivery(
                envelope,
                _Receipt(message["ReceiptHandle"], received_at),
                int(count_text) if count_text else 1,
            )
            deliver_at = envelope.headers.get(h.DELIVER_AT)
            waiting = Waiting(delivery, 0.0 if deliver_at is None else float(deliver_at), lease_end)
            group = attributes.get("MessageGroupId")
            if lines is not None and group is not None and not lines.admit(group, waiting):
                continue  # behind an earlier message of its group, which is still out
            arrived.append(waiting)
        await self._place(arrived)

    async def _place(self, arrived: list[Waiting]) -> None:
        """Hand out what is due; hold what is nearly due; send what is due later on another hop."""
        now = self._clock.now()
        soon: list[Waiting] = []
        later: list[Waiting] = []
        for waiting in arrived:
            if waiting.due <= now:
                waiting.due = 0.0
                self._held.push(waiting)
            elif waiting.due - now <= _HOLD_LIMIT:
                soon.append(waiting)
            else:
                later.append(waiting)
        tasks: list[Awaitable[None]] = []
        if soon:
            tasks.append(self._hold(soon, now))
        if later:
            tasks.append(
                self._hop_by_visibility(later, now) if self.fifo else self._hop_by_resend(later, now)
            )
        await asyncio.gather(*tasks)

    async def _hold(self, soon: list[Waiting], now: float) -> None:
        # Visible again only a lease after it is due, as if it had been received then.
        seconds = [_seconds(waiting.due - now + self.lease_seconds) for waiting in soon]
        failed = await self._change_visibility([waiting.delivery for waiting in soon], seconds)
        received_at = asyncio.get_running_loop().time()
        for number, waiting in enumerate(soon):
            if number not in failed:
                waiting.lease_end = received_at + seconds[number]
                self._held.push(waiting)
        if failed:
            await self._give_back_lines([soon[number].delivery for number in failed])

    async def _hop_by_resend(self, later: list[Waiting], now: float) -> None:
        entries: list[dict[str, Any]] = []
        sizes: list[int] = []
        for number, waiting in enumerate(later):
            body, attributes, size = encode(waiting.delivery.envelope)
            entry: dict[str, Any] = {
                "Id": str(number),
                "MessageBody": body,
                "DelaySeconds": min(int(waiting.due - now), self.max_hop_delay),
            }
            if attributes:
                entry["MessageAttributes"] = attributes
            entries.append(entry)
            sizes.append(size)
        refused = dict(await self._send_entries(entries, sizes))
        if refused:
            # Their received copies come back when their lease ends, and hop then.
            logger.warning("re-delaying %d messages on %r failed: %s", len(refused), self, refused)
        sent = [waiting.delivery for number, waiting in enumerate(later) if number not in refused]
        if sent:
            await self.ack(sent)
        logger.debug("%d messages on %r took another delay hop", len(sent), self)

    async def _hop_by_visibility(self, later: list[Waiting], now: float) -> None:
        seconds = [min(int(waiting.due - now), _LONGEST_VISIBILITY - self._visibility) for waiting in later]
        deliveries = [waiting.delivery for waiting in later]
        await self._change_visibility(deliveries, seconds)
        # The group waits at SQS behind its hidden head; so does the rest of its line.
        await self._give_back_lines(deliveries)
        logger.debug("%d messages on %r took another delay hop", len(later), self)

    async def _give_back_lines(self, heads: Sequence[Delivery]) -> None:
        """Heads going back to SQS: the messages queued behind them in their groups go back too."""
        if not self._lines:
            return
        behind = [waiting.delivery for head in heads for waiting in self._lines.release(head.receipt.handle)]
        if behind:
            await self._change_visibility(behind, 0)

    # -- settling ---------------------------------------------------------------------------------

    async def _in_batches(
        self,
        operation: str,
        entries: list[dict[str, Any]],
    ) -> set[int]:
        """Run a batch operation over entries (Ids are their indexes); the indexes that failed."""
        replies = await asyncio.gather(
            *(
                self._call(operation, Entries=entries[first : first + _BATCH])
                for first in range(0, len(entries), _BATCH)
            )
        )
        failed: set[int] = set()
        for reply in replies:
            for item in reply.get("Failed") or ():
                failed.add(int(item["Id"]))
                code = str(item.get("Code", "")).removeprefix("AWS.SimpleQueueService.")
                # A stale receipt means the lease ran out and the message went to another consumer.
                log = logger.debug if code in _STALE_RECEIPT else logger.warning
                log("%s on %r failed for one message: %s %s", operation, self, code, item.get("Message"))
        return failed

    async def _change_visibility(self, deliveries: Sequence[Delivery], seconds: int | list[int]) -> set[int]:
        if not deliveries:
            return set()
        entries = [
            {
                "Id": str(number),
                "ReceiptHandle": delivery.receipt.handle,
                "VisibilityTimeout": seconds if isinstance(seconds, int) else seconds[number],
            }
            for number, delivery in enumerate(deliveries)
        ]
        return await self._in_batches("change_message_visibility_batch", entries)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._connected()
        if not deliveries:
            return
        entries = [
            {"Id": str(number), "ReceiptHandle": delivery.receipt.handle}
            for number, delivery in enumerate(deliveries)
        ]
        await self._in_batches("delete_message_batch", entries)
        if self._lines:
            # The next message of each finished group may go out now.
            lines = self._lines
            following = [
                waiting
                for delivery in deliveries
                if (waiting := lines.next_after(delivery.receipt.handle)) is not None
            ]
            if following:
                await self._place(following)
                self._released.set()

    async def nack(self, deliveries: Sequence[Delivery], delay: float = 0.0) -> None:
        self._connected()
        if not deliveries:
            return
        seconds = _seconds(delay)
        # SQS counts its 12-hour visibility cap from the receive: past it, send the message anew.
        earliest = asyncio.get_running_loop().time() - (_LONGEST_VISIBILITY - 60 - seconds)
        hidden = [delivery for delivery in deliveries if delivery.receipt.received_at >= earliest]
        resent = [delivery for delivery in deliveries if delivery.receipt.received_at < earliest]
        if hidden:
            await self._change_visibility(hidden, seconds)
            await self._give_back_lines(hidden)
        if resent:
            due = repr(self._clock.now() + delay)
            await self.send([delivery.envelope.with_headers({h.DELIVER_AT: due}) for delivery in resent])
            await self.ack(resent)

    async def extend_lease(self, deliveries: Sequence[Delivery], seconds: float) -> None:
        self._connected()
        if not deliveries:
            return
        if self._lines:
            # Messages waiting behind a head are in flight too: keep them with it.
            lines = self._lines
            behind = [w.delivery for d in deliveries for w in lines.line_of(d.receipt.handle)]
            deliveries = [*deliveries, *behind]
        await self._change_visibility(deliveries, max(1, _seconds(seconds)))

    # -- operating --------------------------------------------------------------------------------

    async def purge(self) -> None:
        self._connected()
        self._held.drain()
        self._lines.drain()
        try:
            await self._call("purge_queue")
        except self._driver.ClientError as error:
            if self._driver.error_code(error) != "PurgeQueueInProgress":
                raise
            await self._delete_visible()

    async def _delete_visible(self) -> None:
        while True:
            reply = await self._call(
                "receive_message", MaxNumberOfMessages=_BATCH, WaitTimeSeconds=0, VisibilityTimeout=30
            )
            messages = reply.get("Messages") or []
            if not messages:
                return
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)]
            await self._in_batches("delete_message_batch", entries)

    async def depth(self) -> int:
        self._connected()
        reply = await self._call("get_queue_attributes", AttributeNames=_COUNTS)
        attributes = reply.get("Attributes") or {}
        return sum(int(attributes.get(name, 0)) for name in _COUNTS)


def _observe(poll: asyncio.Future[None]) -> None:
    """Mark a poll's error as seen: the receive that adopts it raises it, or nobody needs to."""
    if not poll.cancelled():
        poll.exception()
