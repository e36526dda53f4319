from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .kinds import ChannelFactory, ChannelKind, all_kinds

KINDS = all_kinds()


@pytest.fixture(params=[pytest.param(kind, id=kind.name, marks=kind.marks) for kind in KINDS])
async def channel_factory(request: pytest.FixtureRequest) -> AsyncIterator[ChannelFactory]:
    kind: ChannelKind = request.param
    async with kind.open() as factory:
        yield factory


@pytest.fixture(params=[pytest.param(kind, id=kind.name, marks=kind.marks) for kind in KINDS if kind.durable])
async def durable_channel_factory(request: pytest.FixtureRequest) -> AsyncIterator[ChannelFactory]:
    kind: ChannelKind = request.param
    async with kind.open() as factory:
        assert factory.recipe is not None, f"durable kind {kind.name} must give a recipe"
        yield factory
