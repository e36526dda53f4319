"""The stream and durable consumer behind a channel, and the names they get.

One stream per channel, with work-queue retention: a message is stored until it is acked, so the
stream's message count is the channel's depth. One durable pull consumer, shared by every process
that consumes the channel, hands messages out with explicit acks; its `ack_wait` is the lease.
`max_ack_pending` is unlimited because delayed messages wait as unacked deliveries (see `channel`),
and a cap would stall the channel once that many were waiting.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Final

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from tidings.exceptions import ConfigurationError

__all__ = ["Topology", "default_stream_name"]

#: The durable consumer's name; the stream belongs to one channel, so one name fits all.
CONSUMER: Final = "tidings"
#: JetStream's "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE: Final = 10058
_STORAGE: Final = {"file": api.StorageType.FILE, "memory": api.StorageType.MEMORY}


def default_stream_name(prefix: str, channel: str) -> str:
    """`<prefix>-<channel>`; stream names cannot hold dots, so a dotted name gets a checksum too."""
    if "." not in channel:
        return f"{prefix}-{channel}"
    checksum = zlib.crc32(channel.encode()) & 0xFFFFFFFF
    return f"{prefix}-{channel.replace('.', '_')}-{checksum:08x}"


class Topology:
    """Declares (idempotently) and deletes the stream and consumer of one channel."""

    def __init__(
        self,
        *,
        stream: str,
        subject: str,
        ack_wait: float,
        max_deliver: int,
        storage: str,
        replicas: int,
    ) -> None:
        if storage not in _STORAGE:
            raise ValueError(f"storage is 'file' or 'memory', got {storage!r}")
        self.stream = stream
        self.subject = subject
        self.consumer = CONSUMER
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.storage = storage
        self.replicas = replicas
        #: Where pull requests go.
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{CONSUMER}"

    async def declare(self, js: JetStreamContext) -> None:
        """Create the stream and consumer, or check and update the ones that exist."""
        config = api.StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=_STORAGE[self.storage],
            num_replicas=self.replicas,
        )
        try:
            await js.add_stream(config)
        except BadRequestError as error:
            if error.err_code != _STREAM_NAME_IN_USE:
                raise
            await self._check_existing_stream(js)
        # Creating an existing consumer with other editable settings (a new lease) updates it.
        await js.add_consumer(
            self.stream,
            api.ConsumerConfig(
                name=CONSUMER,
                durable_name=CONSUMER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=self.max_deliver,
                max_ack_pending=-1,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )

    async def _check_existing_stream(self, js: JetStreamContext) -> None:
        # Another version of the stream exists (other storage, say): usable as long as it is a
        # work queue for this channel's subject.
        info = await js.stream_info(self.stream)
        config = info.config
        if config.retention != api.RetentionPolicy.WORK_QUEUE or self.subject not in (config.subjects or []):
            raise ConfigurationError(
                f"NATS stream {self.stream!r} exists but is not a work queue on subject "
                f"{self.subject!r} (retention {config.retention}, subjects {config.subjects}); "
                f"delete it, or give the channel another stream name"
            )

    async def exists(self, js: JetStreamContext) -> bool:
        try:
            await js.consumer_info(self.stream, CONSUMER)
        except NotFoundError:
            return False
        return True

    async def delete(self, js: JetStreamContext) -> None:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(self.stream)
