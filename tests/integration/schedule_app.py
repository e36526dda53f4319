"""An app with one schedule firing every second, for worker processes in the schedule tests.

TIDINGS_TEST_DATABASE  the app's database URL
TIDINGS_TEST_LOG       a file each firing appends "<tick> <pid>" to
TIDINGS_TEST_SCHEDULE  the schedule's name
"""

from __future__ import annotations

import os
from datetime import timedelta

from tidings import App, scheduled


def _log(line: str) -> None:
    with open(os.environ["TIDINGS_TEST_LOG"], "a") as log:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())


def _build() -> App | None:
    if "TIDINGS_TEST_DATABASE" not in os.environ:
        return None
    import time

    @scheduled(every=timedelta(seconds=1), name=os.environ["TIDINGS_TEST_SCHEDULE"])
    async def every_second() -> None:
        _log(f"{int(time.time())} {os.getpid()}")

    return App("schedules", handlers=[every_second], database=os.environ["TIDINGS_TEST_DATABASE"])


app = _build()
