"""A PostgreSQL worker whose handlers never ask for a session does all its database work on asyncpg."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tests.conftest import require_service

from tidings import App, DeadLetterFilter
from tidings import headers as h
from tidings.sql import Database

from .conftest import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.postgres
async def test_a_postgresql_worker_handles_deduplicates_dead_letters_and_schedules_without_sqlalchemy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    channel = f"lean-{uuid.uuid4().hex[:10]}"
    report = tmp_path / "report.json"
    environment = {"TIDINGS_TEST_DATABASE": POSTGRES_URL, "TIDINGS_TEST_CHANNEL": channel}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    schema = Database(POSTGRES_URL)
    await schema.create_schema()
    await schema.close()
    from tests.integration.sql import lean_worker_app

    sender: App | None = lean_worker_app._build()
    assert sender is not None
    async with sender:
        for n in range(50):
            await sender.commands.send(lean_worker_app.Job(n))
        twice = str(uuid.uuid4())
        await sender.commands.send(lean_worker_app.Job(50), headers={h.MESSAGE_ID: twice})
        await sender.commands.send(lean_worker_app.Job(50), headers={h.MESSAGE_ID: twice})
        await sender.commands.send(lean_worker_app.Job(-1))

        worker = subprocess.run(
            [
                sys.executable,
                "-m",
                "tidings.cli",
                "run",
                "tests.integration.sql.lean_worker_app:app",
                channel,
                "--time-limit",
                "3",
            ],
            env={**os.environ, "TIDINGS_TEST_REPORT": str(report), "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        letters = await sender.dead_letters.list(DeadLetterFilter(endpoint=channel))
        left = await sender.channel(channel).depth()

    assert worker.returncode == 0, worker.stderr
    seen = json.loads(report.read_text())
    assert seen["sqlalchemy"] == []
    assert sorted(seen["handled"]) == list(range(51))
    assert seen["fired"] >= 1
    assert [letter.exception_type for letter in letters] == ["builtins.ValueError"]
    assert left == 0
