"""The workload every system runs: small messages carrying a number and a send stamp."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

#: Calls an asyncio producer keeps in flight while enqueueing (a careful asyncio user gathers).
WINDOW = 100


class Job(msgspec.Struct, array_like=True):
    n: int
    sent: float  # the producer's time.time() when the message was sent; 0 in the drain phase


encode_job = msgspec.json.Encoder().encode
decode_job = msgspec.json.Decoder(Job).decode


def body(n: int, sent: float = 0.0) -> bytes:
    """The raw loops' message: `[n, sent]` as JSON, a dozen bytes."""
    return encode_job(Job(n, sent))


def executable(name: str) -> str:
    """A console script of the bench virtualenv (the one this Python runs in)."""
    return str(Path(sys.executable).parent / name)


def python_module(module: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", module, *arguments]


async def enqueue_in_flight(count: int, send: Callable[[int], Awaitable[object]]) -> float:
    """Seconds to call `send(n)` for n < count, WINDOW calls in flight at a time."""
    started = time.perf_counter()
    for first in range(0, count, WINDOW):
        await asyncio.gather(*(send(n) for n in range(first, min(count, first + WINDOW))))
    return time.perf_counter() - started


def enqueue_in_loop(count: int, send: Callable[[int], object]) -> float:
    """Seconds to call the blocking `send(n)` for n < count, one after another."""
    started = time.perf_counter()
    for n in range(count):
        send(n)
    return time.perf_counter() - started


async def pace_async(count: int, rate: float, send: Callable[[int, float], Awaitable[object]]) -> None:
    """`send(n, time.time())` for n < count, evenly spaced at `rate` per second, one at a time."""
    started = time.perf_counter()
    for n in range(count):
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
        await send(n, time.time())


def pace_sync(count: int, rate: float, send: Callable[[int, float], object]) -> None:
    started = time.perf_counter()
    for n in range(count):
        time.sleep(max(0.0, started + n / rate - time.perf_counter()))
        send(n, time.time())


def quiet_environment() -> dict[str, str]:
    """The environment for a worker: this one, with Python's output unbuffered for the log file."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
