"""Which delivery tags of one AMQP channel are still unsettled, so that many settle in one frame.

`basic.ack` (and `basic.nack`) with `multiple=True` settles *every* unsettled tag up to the one given.
That is only safe when each lower tag still unsettled is among those being settled now: otherwise a
message whose handler has not finished would be acked with its neighbours. The ledger knows the lowest
unsettled tag (the floor), so it can tell which part of a batch one `multiple` frame may cover.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Ledger"]


class Ledger:
    """The unsettled delivery tags of one AMQP channel (tags count up from 1 on each channel)."""

    __slots__ = ("_floor", "_last", "_open")

    def __init__(self) -> None:
        self._open: set[int] = set()
        #: Every tag below the floor is settled.
        self._floor = 1
        self._last = 0

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, tag: int) -> bool:
        return tag in self._open

    def add(self, tag: int) -> None:
        """Record a delivered tag; tags arrive in increasing order."""
        self._open.add(tag)
        self._last = tag

    def settle(self, tags: Iterable[int]) -> tuple[int | None, list[int]]:
        """Forget `tags` (all unsettled) and say how to settle them on the wire.

        Returns the tag to settle with `multiple=True` (covering every tag of the batch below the new
        floor), or None, and the tags that must be settled one by one.
        """
        batch = list(tags)
        self._open.difference_update(batch)
        floor, last, unsettled = self._floor, self._last, self._open
        while floor <= last and floor not in unsettled:
            floor += 1
        self._floor = floor
        upto: int | None = None
        singles: list[int] = []
        for tag in batch:
            if tag < floor:
                if upto is None or tag > upto:
                    upto = tag
            else:
                singles.append(tag)
        return upto, singles
