"""Publishing a batch with publisher confirms: every frame in one write, every confirm awaited together.

aiormq's `basic_publish` writes each message as a frame set of its own: a socket write and at least a
loop turn per message. For a batch, this module registers each publish with the AMQP channel's confirm
bookkeeping the way `basic_publish` does (next delivery tag, a confirmation future, the message id for
returns), under the channel's lock so that tags follow the order of the frames, and hands the frames of
the whole batch to the connection's writer at once. That roughly doubles the publish rate.

It relies on attributes of aiormq's `Channel` (checked once per channel by `batches_supported`); where
they are missing, `publish` falls back to concurrent `basic_publish` calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiormq import Channel
    from pamqp.commands import Basic

__all__ = ["Publish", "batches_supported", "publish"]

#: (body, exchange, routing key, properties, anything the caller keeps with the message).
Publish = tuple[bytes, str, str, "Basic.Properties", object]

_BOOKKEEPING = (
    "confirmations",
    "create_future",
    "delivery_tag",
    "lock",
    "max_content_size",
    "message_id_delivery_tag",
    "number",
    "write_queue",
)


def batches_supported(channel: Channel) -> bool:
    """Whether this aiormq channel has the confirm bookkeeping that batched writes rely on."""
    return channel.publisher_confirms and all(hasattr(channel, name) for name in _BOOKKEEPING)


async def publish(channel: Channel, batch: Sequence[Publish], *, batched: bool) -> list[object]:
    """Publish `batch` (mandatory) and wait for every confirm.

    Returns, for each message, the broker's `Basic.Ack`, or the exception that took its place (a
    nack or a return is an `aiormq.exceptions.DeliveryError`; a closed channel, a connection error).
    """
    if not batched:
        return await asyncio.gather(
            *[
                channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=True,
                    wait=False,
                )
                for body, exchange, routing_key, properties, _ in batch
            ],
            return_exceptions=True,
        )
    confirmations = await _write(channel, batch)
    try:
        return await asyncio.gather(*confirmations, return_exceptions=True)
    finally:
        forget = channel.message_id_delivery_tag
        for _, _, _, properties, _ in batch:
            forget.pop(properties.message_id, None)  # type: ignore[arg-type]


async def _write(channel: Channel, batch: Sequence[Publish]) -> list[asyncio.Future[object]]:
    from aiormq.abc import ChannelFrame
    from pamqp.body import ContentBody
    from pamqp.commands import Basic
    from pamqp.header import ContentHeader

    frames: list[object] = []
    futures: list[asyncio.Future[object]] = []
    async with channel.lock:
        first_tag = channel.delivery_tag + 1
        chunk = channel.max_content_size
        try:
            for body, exchange, routing_key, properties, _ in batch:
                channel.delivery_tag += 1
                confirmation = channel.create_future()
                channel.confirmations[channel.delivery_tag] = confirmation
                # aiormq finds the publish a returned message belongs to by its message id.
                channel.message_id_delivery_tag[properties.message_id] = channel.delivery_tag  # type: ignore[index]
                futures.append(confirmation)
                frames.append(Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True))
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                if len(body) <= chunk:
                    frames.append(ContentBody(body))
                else:
                    frames.extend(
                        ContentBody(body[start : start + chunk]) for start in range(0, len(body), chunk)
                    )
            payload = ChannelFrame.marshall(channel_number=channel.number, frames=frames)  # type: ignore[arg-type]
            await channel.write_queue.put(payload)
        except BaseException:
            # Nothing reached the writer: give the tags back, so that the broker's count and ours agree.
            for tag in range(first_tag, channel.delivery_tag + 1):
                channel.confirmations.pop(tag, None)
            for _, _, _, properties, _ in batch:
                channel.message_id_delivery_tag.pop(properties.message_id, None)  # type: ignore[arg-type]
            for confirmation in futures:
                confirmation.cancel()
            channel.delivery_tag = first_tag - 1
            raise
    return futures
