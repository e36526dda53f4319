"""Dead letter: the outermost failure handler, so that a message that cannot be handled is kept."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tidings._consumer import DEAD_LETTERED, OUTCOME, FailurePolicy
from tidings.dead_letter import DeadLetter, DeadLetters
from tidings.exceptions import EndpointNotFound, MessageExpired

if TYPE_CHECKING:
    from tidings._app import App
    from tidings._context import MessageContext
    from tidings._message import Envelope
    from tidings.channels.base import Channel, Delivery

__all__ = ["DeadLetterFailurePolicy", "bury", "dead_letter_on_give_up"]

logger = logging.getLogger("tidings.dead_letter")


async def bury(
    dead_letters: DeadLetters,
    envelope: Envelope,
    *,
    channel: str,
    reason: str,
    error: BaseException,
    now: float,
) -> DeadLetter:
    """Store a message in the dead-letter store, with the error that put it there."""
    letter = DeadLetter.of(
        envelope,
        channel=channel,
        reason=reason,
        error=error,
        traceback="".join(traceback.format_exception(error)),
        now=now,
    )
    await dead_letters.store.add(letter)
    logger.error(
        "message %s for endpoint %s dead-lettered (%s after %d attempt(s)): %s: %s [dead letter %s]",
        letter.message_id, letter.endpoint, reason, letter.attempts, type(error).__name__, error,
        letter.id,
    )  # fmt: skip
    return letter


def dead_letter_on_give_up(app: App) -> Callable[[MessageContext, Exception], Awaitable[None]]:
    """What retries do with a failure they give up on: keep the message in the dead-letter store."""

    async def give_up(context: MessageContext, error: Exception) -> None:
        assert context.envelope is not None and context.channel is not None
        await bury(
            app.dead_letters,
            context.envelope,
            channel=context.channel,
            reason="failed",
            error=error,
            now=app.clock.now(),
        )
        context.scope[OUTCOME] = DEAD_LETTERED

    return give_up


class DeadLetterFailurePolicy(FailurePolicy):
    """Dead-letters what failed before reaching a handler: an unknown endpoint, an expired message."""

    async def handle_failure(
        self,
        app: App,
        channel: Channel,
        delivery: Delivery,
        error: Exception,
        context: MessageContext | None,
    ) -> bool:
        if isinstance(error, EndpointNotFound | MessageExpired):
            await bury(
                app.dead_letters,
                delivery.envelope,
                channel=channel.name,
                reason="unknown endpoint" if isinstance(error, EndpointNotFound) else "expired",
                error=error,
                now=app.clock.now(),
            )
            return True
        return await super().handle_failure(app, channel, delivery, error, context)
