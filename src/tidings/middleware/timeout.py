"""Handler timeouts: a handler that runs too long is cancelled and counts as a failure (retried).

A plain `def` handler runs in a worker thread, which cannot be stopped from outside: its wait is
abandoned and the failure counted, but the thread finishes in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from tidings._decorators import spec_of
from tidings.exceptions import HandlerTimedOut
from tidings.middleware.base import CallNext, Middleware

if TYPE_CHECKING:
    from tidings._context import MessageContext
    from tidings._registry import Endpoint

__all__ = ["TimeoutMiddleware", "handler_timeout"]

F = TypeVar("F", bound=Callable[..., Any])

_OPTION = "timeout"


def handler_timeout(limit: timedelta | float) -> Callable[[F], F]:
    """Cancel this handler when it runs longer than `limit`; the handling counts as failed."""
    seconds = limit.total_seconds() if isinstance(limit, timedelta) else float(limit)
    if seconds <= 0:
        raise ValueError(f"a handler timeout must be positive, got {limit}")

    def mark(function: F) -> F:
        spec_of(function).options[_OPTION] = seconds
        return function

    return mark


class TimeoutMiddleware(Middleware):
    """Inside retries: a timed-out handling is retried like any other failure."""

    order = -30

    def applies_to(self, endpoint: Endpoint) -> bool:
        return _OPTION in endpoint.options

    async def handle(self, context: MessageContext, call_next: CallNext) -> Any:
        seconds: float = context.endpoint.options[_OPTION]
        try:
            async with asyncio.timeout(seconds):
                return await call_next(context)
        except TimeoutError as error:
            raise HandlerTimedOut(
                f"endpoint '{context.endpoint_id}' ran longer than its {seconds:g}s timeout on message "
                f"{context.message_id}",
                envelope=context.envelope,
            ) from error
