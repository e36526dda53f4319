"""The `tidings` command against a real app on SQLite, through click's runner."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tidings.cli import load_app, main

APP_SOURCE = """
from dataclasses import dataclass
from tidings import App, RetryPolicy, asynchronous, event_handler
from tidings.channels.sql import SqlChannel

@dataclass
class OrderPlaced:
    order_id: str

@asynchronous("work")
@event_handler
async def ship(event: OrderPlaced) -> None:
    raise RuntimeError("warehouse offline")

app = App(
    "cli-shop", handlers=[ship], channels=[SqlChannel("work")],
    database="sqlite+aiosqlite:///{database}", retry_policy=RetryPolicy.none(),
)
"""


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"cli_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(APP_SOURCE).format(database=tmp_path / "cli.db"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{name}:app"
    sys.modules.pop(name, None)


def invoke(*arguments: str) -> str:
    result = CliRunner().invoke(main, list(arguments), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_db_init_is_idempotent_and_db_sql_prints_every_table(app_module: str) -> None:
    assert "schema version 1 is in place" in invoke("db", "init", app_module)
    assert "schema version 1 is in place" in invoke("db", "init", app_module)

    ddl = invoke("db", "sql", "--dialect", "postgresql")
    for table in (
        "tidings_messages",
        "tidings_dead_letters",
        "tidings_deduplication",
        "tidings_schedule_ticks",
    ):
        assert f"CREATE TABLE {table}" in ddl


def test_channels_shows_how_many_messages_wait_in_each(app_module: str) -> None:
    invoke("db", "init", app_module)

    output = invoke("channels", app_module)

    assert "work" in output
    assert "SqlChannel" in output


def test_endpoints_lists_each_endpoint_with_its_channel(app_module: str) -> None:
    output = invoke("endpoints", app_module)

    assert "ship" in output
    assert "work" in output


def test_dead_letters_can_be_listed_shown_replayed_and_deleted(app_module: str) -> None:
    invoke("db", "init", app_module)
    app = load_app(app_module)
    event_type = sys.modules[app_module.partition(":")[0]].OrderPlaced

    async def fail_twice() -> None:
        async with app:
            await app.events.publish(event_type("o-1"), headers={"tenant": "acme"})
            await app.events.publish(event_type("o-2"), headers={"tenant": "globex"})
            await app.run(stop_when_empty=True)

    asyncio.run(fail_twice())

    listed = invoke("dead-letter", "list", app_module)
    assert "dead letters (2 of 2)" in listed
    assert "RuntimeError" in listed
    assert "dead letters (1 of 1)" in invoke("dead-letter", "list", app_module, "--header", "tenant=acme")

    letter_ids = asyncio.run(_letter_ids(app))
    shown = invoke("dead-letter", "show", app_module, letter_ids[0])
    assert "warehouse offline" in shown
    assert "tenant:" in shown
    assert "Traceback" in shown

    assert "replayed 1" in invoke("dead-letter", "replay", app_module, letter_ids[0])
    assert "replayed 1" in invoke("dead-letter", "replay-all", app_module, "--endpoint", "ship")
    assert "deleted 0" in invoke("dead-letter", "delete", app_module, "--all")


async def _letter_ids(app: object) -> list[str]:
    from tidings import App

    assert isinstance(app, App)
    async with app:
        return [letter.id for letter in await app.dead_letters.list()]


def test_a_bad_app_reference_says_what_is_expected() -> None:
    result = CliRunner().invoke(main, ["endpoints", "no_colon_here"])

    assert result.exit_code != 0
    assert "expected 'module:attribute'" in result.output
