"""Handlers collected by scanning a module (used by test_buses)."""

from __future__ import annotations

from dataclasses import dataclass

from tidings import command_handler, event_handler


@dataclass
class Double:
    value: int


@command_handler
async def double(command: Double) -> int:
    return command.value * 2


class Counter:
    @event_handler
    async def count(self, event: Double) -> None: ...
