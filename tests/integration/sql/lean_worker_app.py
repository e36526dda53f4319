"""A PostgreSQL worker app that never asks for a database session, for the footprint test.

TIDINGS_TEST_DATABASE  the app's database URL
TIDINGS_TEST_CHANNEL   the SqlChannel its handler listens on (also its endpoint id)
TIDINGS_TEST_REPORT    a JSON file the process writes as it exits: what it handled, how often its
                       schedule fired, and which SQLAlchemy modules it had imported
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

from tidings import App, RetryPolicy, asynchronous, command_handler, scheduled
from tidings.channels.sql import SqlChannel


@dataclass
class Job:
    n: int


handled: list[int] = []
fired: list[int] = []


def _report() -> None:
    with open(os.environ["TIDINGS_TEST_REPORT"], "w") as report:
        json.dump(
            {
                "handled": handled,
                "fired": len(fired),
                "sqlalchemy": sorted(name for name in sys.modules if name.split(".")[0] == "sqlalchemy"),
            },
            report,
        )


def _build() -> App | None:
    if "TIDINGS_TEST_DATABASE" not in os.environ:
        return None
    channel = os.environ["TIDINGS_TEST_CHANNEL"]

    @asynchronous(channel)
    @command_handler(endpoint_id=channel)
    async def work(job: Job) -> None:
        if job.n < 0:
            raise ValueError(f"job {job.n} is refused")
        handled.append(job.n)

    @scheduled(every=timedelta(seconds=1), name=channel, catch_up=True)
    async def tick() -> None:
        fired.append(1)

    if "TIDINGS_TEST_REPORT" in os.environ:  # the worker process, not the test sending to it
        atexit.register(_report)
    return App(
        "lean",
        handlers=[work, tick],
        channels=[SqlChannel(channel)],
        database=os.environ["TIDINGS_TEST_DATABASE"],
        retry_policy=RetryPolicy(max_attempts=1),
    )


app = _build()
