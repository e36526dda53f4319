"""The queues and exchanges behind one RabbitMQ channel, delays included.

Without the delayed-message plugin, RabbitMQ can only delay a message by letting it expire in a queue
that dead-letters somewhere else. It expires messages at the head of a queue only, so one queue holding
different delays would hold a short delay behind a longer one. Hence a **cascade of fixed levels**:

- A delay is rounded *up* to whole ticks (`TICK_MS`) and written in binary, most significant bit first,
  as the routing key (`"0.1.1.0...."`, one word per level).
- Level *k* has a queue whose every message waits exactly `TICK_MS * 2**k` (a queue-level TTL, so its
  head is always the first to expire) and a topic exchange. The exchange sends a message into the level's
  queue when the key's bit *k* is 1, and straight on to level *k - 1* when it is 0.
- An expired message is dead-lettered to the exchange one level down with its routing key unchanged;
  level 0 ends in the work queue.

A message therefore visits one queue per 1-bit of its delay, the broker does every hop, and the number
of queues is fixed (`LEVELS`) however many distinct delays are in flight. A delay longer than one pass
(about 9.3 hours) reaches the work queue early, and the consumer sends it round again.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from aiormq.abc import AbstractChannel

__all__ = [
    "LEVELS",
    "MAX_DELAY",
    "TICK_MS",
    "Topology",
]

#: The cascade's resolution: every delay is rounded up to a multiple of this many milliseconds.
TICK_MS: Final = 16
#: Levels in the cascade; one pass covers up to `TICK_MS * (2**LEVELS - 1)` milliseconds.
LEVELS: Final = 21
_MAX_TICKS: Final = (1 << LEVELS) - 1
#: The longest delay one pass through the cascade covers, in seconds.
MAX_DELAY: Final = _MAX_TICKS * TICK_MS / 1000


def _level_pattern(level: int, bit: str) -> str:
    # Word 0 of a routing key is the most significant level; '#' also matches no words at all.
    return "*." * (LEVELS - 1 - level) + bit + ".#"


class Topology:
    """Names, declarations and delay routes for one channel's work queue and delay cascade."""

    __slots__ = ("_level_names", "_work_arguments", "name")

    def __init__(self, name: str, max_priority: int) -> None:
        self.name = name
        self._work_arguments: dict[str, Any] = {"x-max-priority": max_priority}
        self._level_names = [f"{name}.delay-{TICK_MS << level}ms" for level in range(LEVELS)]

    @property
    def queue_names(self) -> list[str]:
        """The work queue first, then every delay level's queue."""
        return [self.name, *self._level_names]

    @property
    def exchange_names(self) -> list[str]:
        return list(self._level_names)

    def delay_route(self, seconds: float) -> tuple[str, str] | None:
        """The exchange and routing key that hold a message back for at least `seconds`.

        None when the delay is not positive. Delays beyond one pass are capped at `MAX_DELAY`.
        """
        ticks = math.ceil(seconds * 1000 / TICK_MS)
        if ticks <= 0:
            return None
        ticks = min(ticks, _MAX_TICKS)
        bits = format(ticks, f"0{LEVELS}b")
        # Enter at the highest level with a 1-bit: the levels above would only pass the message on.
        return self._level_names[ticks.bit_length() - 1], ".".join(bits)

    def _level_arguments(self, level: int) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-message-ttl": TICK_MS << level}
        if level:
            arguments["x-dead-letter-exchange"] = self._level_names[level - 1]
        else:
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = self.name
        return arguments

    async def declare(self, channel: AbstractChannel) -> None:
        """Declare everything, pipelined: one round trip in all, not one per queue or binding.

        A conflicting declaration (say, an existing queue with other arguments) closes the AMQP channel
        and surfaces as the error of the final, synchronous declaration.
        """
        await channel.queue_declare(self.name, durable=True, arguments=self._work_arguments, nowait=True)
        for level, level_name in enumerate(self._level_names):
            await channel.exchange_declare(level_name, exchange_type="topic", durable=True, nowait=True)
            await channel.queue_declare(
                level_name, durable=True, arguments=self._level_arguments(level), nowait=True
            )
            await channel.queue_bind(
                level_name, level_name, routing_key=_level_pattern(level, "1"), nowait=True
            )
            if level:
                await channel.exchange_bind(
                    destination=self._level_names[level - 1],
                    source=level_name,
                    routing_key=_level_pattern(level, "0"),
                    nowait=True,
                )
            else:
                await channel.queue_bind(
                    self.name, level_name, routing_key=_level_pattern(level, "0"), nowait=True
                )
        await channel.queue_declare(self.name, durable=True, arguments=self._work_arguments)

    async def count(self, channel: AbstractChannel) -> int:
        """Messages ready in the work queue and waiting in the cascade (not those delivered unacked)."""
        total = 0
        for queue, arguments in self._queues_with_arguments():
            declared = await channel.queue_declare(queue, durable=True, arguments=arguments)
            total += declared.message_count or 0
        return total

    async def purge(self, channel: AbstractChannel) -> None:
        """Empty the work queue and every level, pipelined."""
        for queue in self.queue_names:
            await channel.queue_purge(queue, nowait=True)
        # A synchronous call after the no-wait purges returns once they all took effect.
        await channel.queue_declare(self.name, durable=True, arguments=self._work_arguments)

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove the queues and exchanges from the broker, with the messages in them."""
        for queue in self.queue_names:
            await channel.queue_delete(queue, nowait=True)
        for exchange in self.exchange_names:
            await channel.exchange_delete(exchange, nowait=True)
        # A synchronous call (on an exchange that always exists) flushes the no-wait deletes above.
        await channel.exchange_declare("amq.direct", exchange_type="direct", passive=True)

    def _queues_with_arguments(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (self.name, self._work_arguments),
            *(
                (level_name, self._level_arguments(level))
                for level, level_name in enumerate(self._level_names)
            ),
        ]
