"""Received messages the channel keeps for a moment instead of handing them out at once.

Two reasons to keep one:

- it is due within a second or two (`DelaySeconds` is whole seconds), so it waits in `Held`, a heap
  ordered by due time, until a receive hands it out;
- on a FIFO queue, an earlier message of its message group is still being handled. AWS may return
  several messages of one group in one batch, and handing them all out would let concurrent
  workers handle them out of order; so `GroupLines` lets one message per group out at a time and
  releases the next when that one is acked.

Both are in flight at SQS (their visibility timeout runs), so nothing here is lost by a crash.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidings.channels.base import Delivery

__all__ = ["GroupLines", "Held", "Waiting"]


class Waiting:
    """A received message not handed out yet."""

    __slots__ = ("delivery", "due", "lease_end")

    def __init__(self, delivery: Delivery, due: float, lease_end: float) -> None:
        self.delivery = delivery
        #: When it may be handed out (the app's clock); 0.0 for at once.
        self.due = due
        #: When its visibility timeout ends (the event loop's clock).
        self.lease_end = lease_end

    @property
    def handle(self) -> str:
        handle: str = self.delivery.receipt.handle
        return handle


class Held:
    """Messages waiting to be handed out, soonest due first, in arrival order among equals."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Waiting]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, waiting: Waiting) -> None:
        heapq.heappush(self._heap, (waiting.due, next(self._order), waiting))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int) -> list[Waiting]:
        heap = self._heap
        due: list[Waiting] = []
        while heap and heap[0][0] <= now and len(due) < limit:
            due.append(heapq.heappop(heap)[2])
        return due

    def drain(self) -> list[Waiting]:
        drained = [entry[2] for entry in self._heap]
        self._heap.clear()
        return drained


class GroupLines:
    """FIFO message groups with a message out: the group's *head*, and the rest of its line."""

    def __init__(self) -> None:
        self._lines: dict[str, deque[Waiting]] = {}
        self._heads: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._heads)

    def admit(self, group: str, waiting: Waiting) -> bool:
        """True if the message may go out now; else it queues behind its group's head."""
        line = self._lines.get(group)
        if line is not None:
            line.append(waiting)
            return False
        self._lines[group] = deque()
        self._heads[waiting.handle] = group
        return True

    def next_after(self, handle: str) -> Waiting | None:
        """The head `handle` is done: the next of its group, which becomes the head, if any."""
        group = self._heads.pop(handle, None)
        if group is None:
            return None
        line = self._lines[group]
        if not line:
            del self._lines[group]
            return None
        following = line.popleft()
        self._heads[following.handle] = group
        return following

    def release(self, handle: str) -> list[Waiting]:
        """The head `handle` goes back to SQS: its group's line goes back too (returned)."""
        group = self._heads.pop(handle, None)
        if group is None:
            return []
        return list(self._lines.pop(group))

    def line_of(self, handle: str) -> list[Waiting]:
        group = self._heads.get(handle)
        return [] if group is None else list(self._lines[group])

    def drain(self) -> list[Waiting]:
        drained = [waiting for line in self._lines.values() for waiting in line]
        self._lines.clear()
        self._heads.clear()
        return drained
