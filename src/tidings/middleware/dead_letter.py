"""Dead letter: where a message that cannot be handled is kept, with the error that put it there."""

from __future__ import annotations

import logging
import traceback

from tidings._consumer import DEAD_LETTERED, Failure, FailurePolicy
from tidings.dead_letter import DeadLetter
from tidings.exceptions import EndpointNotFound, MessageExpired

__all__ = ["DeadLetterFailurePolicy"]

logger = logging.getLogger("tidings.dead_letter")


class DeadLetterFailurePolicy(FailurePolicy):
    """Dead-letters what failed before reaching a handler: an unknown endpoint, an expired message.

    Other failures go back to their channel with a growing delay; `RetryingFailurePolicy`, the app's
    policy, retries them and dead-letters the last one."""

    async def handle_failure(self, failure: Failure) -> str | None:
        if isinstance(failure.error, EndpointNotFound):
            return await self.dead_letter(failure, "unknown endpoint")
        if isinstance(failure.error, MessageExpired):
            return await self.dead_letter(failure, "expired")
        return await super().handle_failure(failure)

    @staticmethod
    async def dead_letter(failure: Failure, reason: str) -> str:
        """Keep the message in the dead-letter store, with the error that put it there."""
        app, error = failure.app, failure.error
        letter = DeadLetter.of(
            failure.delivery.envelope,
            channel=failure.channel.name,
            reason=reason,
            error=error,
            traceback="".join(traceback.format_exception(error)),
            now=app.clock.now(),
        )
        await app.dead_letters.store.add(letter)
        logger.error(
            "message %s for endpoint %s dead-lettered (%s after %d attempt(s)): %s: %s [dead letter %s]",
            letter.message_id, letter.endpoint, reason, letter.attempts, type(error).__name__, error,
            letter.id,
        )  # fmt: skip
        return DEAD_LETTERED
