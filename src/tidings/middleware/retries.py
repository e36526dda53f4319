"""Retries: instant ones in process, then delayed ones through the channel, then the dead letter.

A delayed retry re-sends only the failed endpoint's copy to the channel it came from, with
`tidings.attempt` + 1 and a delivery time; the consumer acks the original and moves on. Nothing sleeps
in the consumer and nothing waits in memory. Cancellations (a worker shutting down) are not failures
and never cost an attempt.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar, final

from tidings import headers as h
from tidings._consumer import RETRIED, RUN_AGAIN, Failure
from tidings._decorators import spec_of
from tidings.exceptions import EndpointNotFound, SerializationError
from tidings.middleware.dead_letter import DeadLetterFailurePolicy

if TYPE_CHECKING:
    from tidings._registry import Endpoint

__all__ = ["Backoff", "RetryPolicy", "RetryingFailurePolicy", "retry"]

logger = logging.getLogger("tidings.retries")

F = TypeVar("F", bound=Callable[..., Any])

_OPTION = "retry"


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@final
@dataclass(frozen=True)
class Backoff:
    """The wait before each delayed retry: exponential (capped), fixed, or a schedule of your own."""

    #: Wait before the first delayed retry, in seconds.
    initial: float = 1.0
    #: Each further wait is the previous one times this.
    multiplier: float = 2.0
    #: No wait is longer than this, in seconds: a cap, not a reason to stop.
    max_delay: float = 300.0
    #: Each wait is moved randomly by up to this fraction, so that retries of many messages spread.
    jitter: float = 0.1
    #: Explicit waits for retry 1, 2, ...; the last repeats. Overrides the formula when given.
    schedule: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.initial < 0 or self.multiplier < 1 or self.max_delay < 0:
            raise ValueError("a backoff needs initial >= 0, multiplier >= 1 and max_delay >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter is a fraction between 0 and 1, got {self.jitter}")

    @classmethod
    def exponential(
        cls,
        initial: float | timedelta = 1.0,
        multiplier: float = 2.0,
        max_delay: float | timedelta = 300.0,
        jitter: float = 0.1,
    ) -> Backoff:
        return cls(_seconds(initial), multiplier, _seconds(max_delay), jitter)

    @classmethod
    def fixed(cls, delay: float | timedelta, jitter: float = 0.0) -> Backoff:
        seconds = _seconds(delay)
        return cls(seconds, 1.0, seconds, jitter)

    @classmethod
    def custom(cls, delays: Sequence[float | timedelta], jitter: float = 0.0) -> Backoff:
        if not delays:
            raise ValueError("a custom backoff needs at least one delay")
        seconds = tuple(_seconds(delay) for delay in delays)
        return cls(seconds[0], 1.0, max(seconds), jitter, seconds)

    def delay(self, retry: int, *, random_fraction: float | None = None) -> float:
        """Seconds to wait before delayed retry number `retry` (1 for the first)."""
        if self.schedule:
            base = self.schedule[min(retry, len(self.schedule)) - 1]
        else:
            base = min(self.initial * self.multiplier ** (retry - 1), self.max_delay)
        if self.jitter:
            fraction = random.random() if random_fraction is None else random_fraction
            base *= 1 + self.jitter * (2 * fraction - 1)
        return max(base, 0.0)


@final
@dataclass(frozen=True)
class RetryPolicy:
    """How an endpoint's failures are retried before its message is dead-lettered."""

    #: Attempts in all, the first one included; the last failure goes to the dead letter.
    max_attempts: int = 5
    #: Immediate re-runs in process before a delayed retry (skipped inside an open transaction).
    instant_retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    #: Only these exceptions are retried (all, by default).
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    #: These are never retried: straight to the dead letter.
    never_retry: tuple[type[BaseException], ...] = (SerializationError, EndpointNotFound)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.instant_retries < 0:
            raise ValueError("max_attempts must be at least 1 and instant_retries at least 0")

    def retries(self, error: BaseException) -> bool:
        return isinstance(error, self.retry_on) and not isinstance(error, self.never_retry)

    @classmethod
    def none(cls) -> RetryPolicy:
        """Dead-letter on the first failure."""
        return cls(max_attempts=1)


def retry(policy: RetryPolicy | None = None, **options: Any) -> Callable[[F], F]:
    """Give one handler its own retry policy: `@retry(max_attempts=10, backoff=Backoff.fixed(30))`."""
    chosen = policy if policy is not None else RetryPolicy(**options)

    def mark(function: F) -> F:
        spec_of(function).options[_OPTION] = chosen
        return function

    return mark


class RetryingFailurePolicy(DeadLetterFailurePolicy):
    """What the consumer does with a failed handling: instant retries, then delayed retries through
    the channel, then the dead letter. Nothing wraps a handler for this: a handling that raised has
    already unwound, its transaction rolled back and what it sent dropped."""

    def __init__(self, default: RetryPolicy, per_channel: Mapping[str, RetryPolicy]) -> None:
        self.default = default
        self.per_channel = dict(per_channel)

    def policy_for(self, endpoint: Endpoint) -> RetryPolicy:
        own: RetryPolicy | None = endpoint.options.get(_OPTION)
        if own is not None:
            return own
        return self.per_channel.get(endpoint.channels[-1], self.default)

    async def handle_failure(self, failure: Failure) -> str | None:
        context, error = failure.context, failure.error
        if context is None:  # failed before reaching a handler: nothing to retry
            return await super().handle_failure(failure)
        policy = self.policy_for(context.endpoint)
        if policy.retries(error):
            if failure.instant_retries < policy.instant_retries:
                logger.warning(
                    "endpoint %s failed on message %s (%s); instant retry %d of %d",
                    context.endpoint_id, context.message_id, error, failure.instant_retries + 1,
                    policy.instant_retries,
                )  # fmt: skip
                return RUN_AGAIN
            attempt = context.attempt
            if attempt < policy.max_attempts:
                await self._retry_later(failure, policy, attempt)
                return RETRIED
        return await self.dead_letter(failure, "failed")

    @staticmethod
    async def _retry_later(failure: Failure, policy: RetryPolicy, attempt: int) -> None:
        envelope, error = failure.delivery.envelope, failure.error
        now = failure.app.clock.now()
        delay = policy.backoff.delay(attempt)
        changes: dict[str, str | None] = {
            h.ATTEMPT: str(attempt + 1),
            h.DELIVER_AT: f"{now + delay:.6f}",
        }
        if h.FIRST_FAILED_AT not in envelope.headers:
            changes[h.FIRST_FAILED_AT] = f"{now:.6f}"
        await failure.channel.send([envelope.with_headers(changes)])
        logger.warning(
            "endpoint %s failed on message %s (attempt %d of %d: %s: %s); retrying in %.1fs",
            envelope.endpoint, envelope.message_id, attempt, policy.max_attempts,
            type(error).__name__, error, delay,
        )  # fmt: skip
