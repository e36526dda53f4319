"""Channel kinds the conformance suite runs against: one module per broker, each defining `KIND`.

A module here is all it takes for a channel to join the suite.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest

from tidings.channels.base import Channel


@dataclass
class ChannelFactory:
    """Makes fresh, unconnected channels of one kind, and the app database they may need."""

    new: Callable[..., Channel]
    #: The app's database URL for kinds that keep messages in it.
    database: str | None = None
    #: Extra keyword arguments for App(...) when the app-level suite builds an app on this kind.
    app_options: dict[str, Any] = field(default_factory=dict)
    #: How another process builds the same channel: the class as "module:Class" and the keyword
    #: arguments besides the name and lease_seconds (JSON values). None for process-local channels.
    recipe: tuple[str, dict[str, Any]] | None = None


@dataclass
class ChannelKind:
    name: str
    #: An async context manager: checks the server (skip by hand, fail in CI), yields a factory,
    #: cleans up after.
    open: Callable[[], AbstractAsyncContextManager[ChannelFactory]]
    marks: list[pytest.MarkDecorator] = field(default_factory=list)
    #: Whether messages outlive the process (false only for the in-memory channel); the crash and
    #: shutdown tests run over durable kinds, whose factories give a `recipe`.
    durable: bool = True


def all_kinds() -> list[ChannelKind]:
    kinds = []
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        kinds.extend(getattr(module, "KINDS", [getattr(module, "KIND", None)]))
    return [kind for kind in kinds if kind is not None]


__all__ = ["AsyncIterator", "ChannelFactory", "ChannelKind", "all_kinds"]
