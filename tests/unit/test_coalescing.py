"""The batching behind the PostgreSQL deduplication records: concurrent calls travel as one."""

from __future__ import annotations

import asyncio

import pytest

from tidings.sql._stores import _Coalescing


async def test_calls_made_at_the_same_time_run_as_one_batch_and_each_gets_its_own_result() -> None:
    batches: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [item * 2 for item in items]

    coalescing = _Coalescing(double)
    results = await asyncio.gather(*(coalescing(n) for n in range(10)))

    assert results == [n * 2 for n in range(10)]
    assert batches == [list(range(10))]


async def test_calls_made_while_a_batch_is_on_the_wire_form_the_next_batch() -> None:
    batches: list[list[int]] = []
    on_the_wire = asyncio.Event()

    async def record(items: list[int]) -> list[None]:
        batches.append(items)
        on_the_wire.set()
        await asyncio.sleep(0.01)
        return [None] * len(items)

    coalescing = _Coalescing(record)
    first = asyncio.ensure_future(coalescing(1))
    await on_the_wire.wait()
    await asyncio.gather(coalescing(2), coalescing(3), first)

    assert batches == [[1], [2, 3]]


async def test_a_call_nobody_joins_leaves_without_waiting_for_later_ones() -> None:
    batches: list[list[int]] = []

    async def record(items: list[int]) -> list[None]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [None] * len(items)

    async def later(n: int) -> None:
        await asyncio.sleep(0)  # one turn of the loop after the first call
        await coalescing(n)

    coalescing = _Coalescing(record)
    await asyncio.gather(coalescing(1), later(2))

    assert batches == [[1], [2]]


async def test_a_failed_batch_raises_in_every_caller_and_the_next_batch_still_runs() -> None:
    async def fail_first(items: list[int]) -> list[int]:
        if 0 in items:
            raise ConnectionError("database gone")
        return items

    coalescing = _Coalescing(fail_first)
    outcomes = await asyncio.gather(coalescing(0), coalescing(1), return_exceptions=True)

    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert await coalescing(2) == 2


@pytest.mark.parametrize("count", [1, 3])
async def test_a_caller_that_is_cancelled_does_not_stop_the_others(count: int) -> None:
    release = asyncio.Event()

    async def slow(items: list[int]) -> list[int]:
        await release.wait()
        return items

    coalescing = _Coalescing(slow)
    cancelled = asyncio.ensure_future(coalescing(0))
    others = [asyncio.ensure_future(coalescing(n)) for n in range(1, count + 1)]
    await asyncio.sleep(0.01)
    cancelled.cancel()
    release.set()

    assert await asyncio.gather(*others) == list(range(1, count + 1))
    assert cancelled.cancelled()
