"""An app for worker subprocesses in the conformance suite, built from environment variables.

    TIDINGS_TEST_RECIPE    JSON ["module:ChannelClass", {keyword arguments}]
    TIDINGS_TEST_CHANNEL   the channel name
    TIDINGS_TEST_LEASE     lease seconds
    TIDINGS_TEST_DATABASE  the app's database URL, if any
    TIDINGS_TEST_LOG       a file the handler appends "start N" and "done N" lines to

Run as `tidings run tests.conformance.worker_app:app CHANNEL` or `python -m tests.conformance.worker_app`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
from dataclasses import dataclass

from tidings import App, asynchronous, event_handler
from tidings.channels.base import Channel


@dataclass
class Numbered:
    n: int
    seconds: float = 0.0


def _log(line: str) -> None:
    with open(os.environ["TIDINGS_TEST_LOG"], "a") as log:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())


def build_channel(recipe: tuple[str, dict[str, object]], name: str, lease_seconds: float) -> Channel:
    path, options = recipe
    module, _, attribute = path.partition(":")
    channel_class = getattr(importlib.import_module(module), attribute)
    channel: Channel = channel_class(name, lease_seconds=lease_seconds, **options)
    return channel


def build_app(
    recipe: tuple[str, dict[str, object]], name: str, lease_seconds: float, database: str | None
) -> App:
    @asynchronous(name)
    @event_handler(endpoint_id="numbered")
    async def handle(event: Numbered) -> None:
        _log(f"start {event.n}")
        await asyncio.sleep(event.seconds)
        _log(f"done {event.n}")

    return App(
        "conformance-worker",
        handlers=[handle],
        channels=[build_channel(recipe, name, lease_seconds)],
        database=database,
    )


def _from_environment() -> App | None:
    if "TIDINGS_TEST_RECIPE" not in os.environ:
        return None
    path, options = json.loads(os.environ["TIDINGS_TEST_RECIPE"])
    return build_app(
        (path, options),
        os.environ["TIDINGS_TEST_CHANNEL"],
        float(os.environ.get("TIDINGS_TEST_LEASE", "30")),
        os.environ.get("TIDINGS_TEST_DATABASE") or None,
    )


app = _from_environment()


async def _main() -> None:
    assert app is not None
    async with app:
        await app.run(handle_signals=True, concurrency=4)


if __name__ == "__main__":
    asyncio.run(_main())
