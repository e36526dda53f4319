"""Deduplication: a message handled once by an endpoint is skipped when it comes again.

On by default for asynchronous endpoints, keyed (message id, endpoint id), so a redelivery after a
crash, or a duplicate sent with the same id, does not run the handler twice. `@deduplicated` keys on a
header or a function of the message instead, optionally under a tracking name shared by several
handlers, and works on synchronous handlers and commands too.

Inside a database transaction (a handler that uses the app's database), the record is written in that
transaction before the handler runs: the handler's effects and the record commit or roll back
together, and a concurrent duplicate waits on the record and is then skipped. Elsewhere the record is
written after the handler succeeded. Records are kept for a retention window (7 days by default) and
purged automatically.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, final

from tidings import headers as h
from tidings._consumer import OUTCOME
from tidings._decorators import spec_of
from tidings.middleware.base import CallNext, Middleware

if TYPE_CHECKING:
    from tidings._app import App
    from tidings._context import MessageContext
    from tidings._registry import Endpoint

__all__ = [
    "DUPLICATE",
    "DeduplicationMiddleware",
    "DeduplicationStore",
    "InMemoryDeduplicationStore",
    "deduplicated",
]

logger = logging.getLogger("tidings.deduplication")

F = TypeVar("F", bound=Callable[..., Any])

_OPTION = "deduplicated"
_MESSAGE_ID: Final = h.MESSAGE_ID
DUPLICATE = "duplicate"
_PURGE_EVERY_SECONDS = 600.0


class DeduplicationStore(Protocol):
    """Remembers which keys an endpoint (or tracking name) has handled."""

    async def contains(self, tracking: str, key: str) -> bool:
        """Whether `key` was handled under `tracking` (and not purged since)."""
        ...

    async def add(self, tracking: str, key: str, handled_at: float) -> None:
        """Remember `key`. Inside an open transaction on the store's database it is part of it and
        fails if the key is already there; outside one, adding a known key changes nothing."""
        ...

    async def purge(self, older_than: float) -> int:
        """Forget records from before `older_than`; returns how many went."""
        ...


@final
class InMemoryDeduplicationStore:
    """Records in a dict: one process only, lost on restart; for tests and apps without a database.

    It keeps the latest `max_records` records (and none past the retention window), so that a worker
    that runs for weeks does not grow with every message it handled: what it catches are redeliveries
    and repeated sends while the process lives, which come soon after the first copy.
    """

    def __init__(self, max_records: int = 100_000) -> None:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        self.max_records = max_records
        # Trimmed a tenth at a time, so that trimming costs nothing per message on average.
        self._trim_above = max_records + max(max_records // 10, 1)
        self._handled: dict[tuple[str, str], float] = {}

    async def contains(self, tracking: str, key: str) -> bool:
        return (tracking, key) in self._handled

    async def add(self, tracking: str, key: str, handled_at: float) -> None:
        self.remember((tracking, key), handled_at)

    def remember(self, record: tuple[str, str], handled_at: float) -> None:
        """Add a record; past the limit, the oldest go (a dict keeps the order records came in)."""
        handled = self._handled
        handled[record] = handled_at
        if len(handled) > self._trim_above:
            self._handled = dict(itertools.islice(handled.items(), len(handled) - self.max_records, None))

    async def purge(self, older_than: float) -> int:
        old = [record for record, at in self._handled.items() if at < older_than]
        for record in old:
            del self._handled[record]
        return len(old)


@final
@dataclass(frozen=True)
class _Deduplication:
    header: str | None
    key: Callable[[Any], object] | None
    tracking_name: str | None


def deduplicated(
    *, header: str | None = None, key: Callable[[Any], object] | None = None, tracking_name: str | None = None
) -> Callable[[F], F]:
    """Skip a handler for a message whose key it already handled.

    The key is a header (`header="payment_id"`), a function of the message (`key=lambda m: m.order_id`)
    or, by default, the message id. `tracking_name` shares the record between handlers (the default is
    the endpoint id).
    """
    if header is not None and key is not None:
        raise ValueError("deduplicated() takes a header or a key function, not both")

    def mark(function: F) -> F:
        spec_of(function).options[_OPTION] = _Deduplication(header, key, tracking_name)
        return function

    return mark


def _message_id(context: MessageContext) -> str | None:
    return context.headers.get(_MESSAGE_ID) or None


def _key(rule: _Deduplication, context: MessageContext) -> str | None:
    if rule.header is not None:
        return context.headers.get(rule.header)
    if rule.key is not None:
        return str(rule.key(context.message))
    return _message_id(context)


def _skip(context: MessageContext, tracking: str, key: str) -> None:
    logger.info("skipped duplicate of %s for %s (key %s)", context.message_id, tracking, key)
    context.scope[OUTCOME] = DUPLICATE


class DeduplicationMiddleware(Middleware):
    """Skips handlings whose key was already handled; inside the transaction middleware."""

    order = -5

    def __init__(
        self,
        app: App,
        *,
        retention: timedelta,
        by_default: bool,
        in_transaction: Callable[[], bool],
    ) -> None:
        self.app = app
        self.retention = retention.total_seconds()
        self.by_default = by_default
        self.in_transaction = in_transaction
        self._next_purge = 0.0
        self._purging: asyncio.Task[None] | None = None
        self._in_flight: dict[tuple[str, str], asyncio.Future[None] | None] = {}

    def applies_to(self, endpoint: Endpoint) -> bool:
        return _OPTION in endpoint.options or (self.by_default and endpoint.is_asynchronous)

    def wrap(self, endpoint: Endpoint, call_next: CallNext) -> CallNext:
        rule: _Deduplication | None = endpoint.options.get(_OPTION)
        tracking = (rule.tracking_name if rule else None) or endpoint.id
        key_of = _message_id if rule is None else functools.partial(_key, rule)
        in_flight = self._in_flight
        app = self.app

        async def deduplicate(context: MessageContext) -> Any:
            key = key_of(context)
            if key is None:
                return await call_next(context)
            slot = (tracking, key)
            if slot in in_flight:
                await self._take_turn(slot)
            in_flight[slot] = None
            try:
                store = app.deduplication_store
                now = app.clock.now()
                if now >= self._next_purge:
                    self._purge_soon(store, now)
                if type(store) is InMemoryDeduplicationStore:
                    # The default without a database: plain dict work, no round trips to await.
                    if slot in store._handled:
                        return _skip(context, tracking, key)
                    result = await call_next(context)
                    store.remember(slot, now)
                    return result
                if await store.contains(tracking, key):
                    return _skip(context, tracking, key)
                if self.in_transaction():
                    # Claimed in the handler's transaction: commits or rolls back with its effects.
                    await store.add(tracking, key, now)
                    return await call_next(context)
                result = await call_next(context)
                await store.add(tracking, key, now)
                return result
            finally:
                waiter = in_flight.pop(slot)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

        return deduplicate

    async def handle(self, context: MessageContext, call_next: CallNext) -> Any:
        return await self.wrap(context.endpoint, call_next)(context)

    async def _take_turn(self, slot: tuple[str, str]) -> None:
        """Wait until no other copy of this key is being handled in this process.

        Copies of one key handled at once in this process take turns, so the second sees the first
        one's record. Across processes, a transaction's record lock does the same.
        """
        in_flight = self._in_flight
        while slot in in_flight:
            waiter = in_flight[slot]
            if waiter is None:
                waiter = in_flight[slot] = asyncio.get_running_loop().create_future()
            await waiter

    def _purge_soon(self, store: DeduplicationStore, now: float) -> None:
        if self._purging is not None and not self._purging.done():
            return
        self._next_purge = now + _PURGE_EVERY_SECONDS
        self._purging = asyncio.ensure_future(self._purge(store, now - self.retention))

    async def stop_purging(self) -> None:
        """Cut off a purge still running, before the store's connections close; the next one redoes it."""
        purging, self._purging = self._purging, None
        if purging is not None and not purging.done():
            purging.cancel()
            await asyncio.gather(purging, return_exceptions=True)

    @staticmethod
    async def _purge(store: DeduplicationStore, older_than: float) -> None:
        try:
            purged = await store.purge(older_than)
        except Exception:
            logger.exception("purging expired deduplication records failed; will try again later")
        else:
            if purged:
                logger.info("purged %d expired deduplication records", purged)
