"""The `tidings` command: run consumers, list endpoints, manage the database."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from typing import Any

import click

from tidings._app import App

__all__ = ["load_app", "main"]


def load_app(reference: str) -> App:
    """Import `module:attribute` (an App, or a function returning one) from the working directory."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"expected 'module:attribute', e.g. 'shop.app:app', got {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise click.BadParameter(f"cannot import module {module_name!r}: {error}") from error
    try:
        target: Any = getattr(module, attribute)
    except AttributeError:
        raise click.BadParameter(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(target, App) and callable(target):
        target = target()
    if not isinstance(target, App):
        raise click.BadParameter(f"{reference} is {type(target).__name__}, not a tidings App")
    return target


@click.group()
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
def main(log_level: str) -> None:
    """tidings: asynchronous messaging with an outbox, isolation, retries and dead letters."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=log_level.upper(),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, rich_tracebacks=True)],
    )


@main.command()
@click.argument("app_reference", metavar="MODULE:APP")
@click.argument("channels", nargs=-1)
@click.option("--concurrency", default=10, show_default=True, help="Handlers running at once.")
@click.option("--batch-size", default=100, show_default=True, help="Messages received per call.")
@click.option("--limit", "message_limit", type=int, help="Stop after handling this many messages.")
@click.option("--time-limit", type=float, help="Stop after this many seconds.")
@click.option("--memory-limit", "memory_limit_mb", type=float, help="Stop above this RSS, in MB.")
@click.option("--stop-when-empty", is_flag=True, help="Stop when nothing more is due.")
@click.option(
    "--drain-timeout",
    default=30.0,
    show_default=True,
    help="Seconds in-flight handlers get to finish on SIGTERM/SIGINT.",
)
def run(app_reference: str, channels: tuple[str, ...], **options: Any) -> None:
    """Consume CHANNELS (every declared channel if none named) and run their handlers."""
    app = load_app(app_reference)

    async def consume() -> None:
        async with app:
            stats = await app.run(*channels, handle_signals=True, **options)
        logging.getLogger("tidings").info(
            "stopped (%s): %d handled, %d relayed (worst outbox lag %.2fs), %d retried, "
            "%d dead-lettered, %d duplicates, %d expired, %d returned",
            stats.stopped_because or "done",
            stats.handled,
            stats.relayed,
            stats.max_relay_lag,
            stats.retried,
            stats.dead_lettered,
            stats.duplicates,
            stats.expired,
            stats.returned,
        )

    asyncio.run(consume())


@main.command()
@click.argument("app_reference", metavar="MODULE:APP")
def endpoints(app_reference: str) -> None:
    """List every endpoint with its message, channels and policies."""
    from rich.console import Console
    from rich.table import Table

    app = load_app(app_reference)
    table = Table(title=f"endpoints of {app.name}")
    for column in ("endpoint", "kind", "message", "channels", "policies", "handler"):
        table.add_column(column)
    for endpoint in app.endpoints.values():
        policies = []
        if endpoint.delay is not None:
            policies.append(f"delay={endpoint.delay}")
        if endpoint.priority is not None:
            policies.append(f"priority={endpoint.priority}")
        if endpoint.time_to_live is not None:
            policies.append(f"ttl={endpoint.time_to_live}")
        policies.extend(f"{key}={value}" for key, value in endpoint.options.items())
        names = ", ".join(endpoint.names)
        message = endpoint.message_type_name + (f" ({names})" if names else "")
        table.add_row(
            endpoint.id,
            endpoint.kind,
            message,
            " → ".join(endpoint.channels) or "(sync)",
            ", ".join(policies),
            endpoint.qualname,
        )
    Console().print(table)


@main.command()
@click.argument("app_reference", metavar="MODULE:APP")
def channels(app_reference: str) -> None:
    """How many messages wait in each channel (delayed and in-flight ones included)."""
    from rich.console import Console
    from rich.table import Table

    app = load_app(app_reference)

    async def depths() -> dict[str, int]:
        async with app:
            return {name: await channel.depth() for name, channel in app.channels.items()}

    table = Table(title=f"channels of {app.name}")
    table.add_column("channel")
    table.add_column("kind")
    table.add_column("waiting", justify="right")
    for name, depth in asyncio.run(depths()).items():
        table.add_row(name, type(app.channel(name)).__name__, str(depth))
    Console().print(table)


@main.group()
def db() -> None:
    """The app's database: create the schema, or print it for a DBA."""


def _database_of(app: App) -> Any:
    from tidings.sql import Database

    if app.database is None:
        raise click.UsageError(f"app '{app.name}' has no database; pass App(database=...)")
    return app.database if isinstance(app.database, Database) else Database(app.database)


@db.command("init")
@click.argument("app_reference", metavar="MODULE:APP")
def db_init(app_reference: str) -> None:
    """Create or upgrade tidings' tables in the app's database (safe to run again)."""
    database = _database_of(load_app(app_reference))

    async def create() -> int:
        try:
            version: int = await database.create_schema()
            return version
        finally:
            await database.close()

    version = asyncio.run(create())
    click.echo(f"tidings schema version {version} is in place in {database.safe_url}")


@db.command("sql")
@click.argument("app_reference", metavar="MODULE:APP", required=False)
@click.option(
    "--dialect",
    type=click.Choice(["postgresql", "mysql", "mariadb", "sqlite"]),
    help="Print for this database instead of the app's.",
)
def db_sql(app_reference: str | None, dialect: str | None) -> None:
    """Print the DDL of tidings' tables, for the app's database or the given dialect."""
    from tidings.sql._schema import schema_sql

    if dialect is None:
        if app_reference is None:
            raise click.UsageError("give MODULE:APP or --dialect")
        dialect = _database_of(load_app(app_reference)).dialect_name
    click.echo(schema_sql(dialect))


@main.group("dead-letter")
def dead_letter() -> None:
    """Dead letters: list, show, replay (one, filtered or all) and delete."""


def _filter_options(function: Any) -> Any:
    for option in reversed(
        [
            click.option("--endpoint", help="Only this endpoint's dead letters."),
            click.option("--channel", help="Only dead letters from this channel."),
            click.option("--exception", "exception_type", help="Only this exception type (e.g. ValueError)."),
            click.option("--header", help="Only with this header value, as name=value (e.g. tenant=acme)."),
            click.option("--since", type=click.DateTime(), help="Failed at or after this time (UTC)."),
            click.option("--until", type=click.DateTime(), help="Failed at or before this time (UTC)."),
        ]
    ):
        function = option(function)
    return function


def _filter(options: dict[str, Any]) -> Any:
    from datetime import UTC

    from tidings.dead_letter import DeadLetterFilter

    header = None
    if options.get("header"):
        name, separator, value = options["header"].partition("=")
        if not separator:
            raise click.BadParameter("--header takes name=value, e.g. tenant=acme")
        header = (name, value)
    since, until = options.get("since"), options.get("until")
    return DeadLetterFilter(
        endpoint=options.get("endpoint"),
        channel=options.get("channel"),
        exception_type=options.get("exception_type"),
        header=header,
        since=since.replace(tzinfo=UTC).timestamp() if since else None,
        until=until.replace(tzinfo=UTC).timestamp() if until else None,
    )


def _with_app(app_reference: str, work: Any) -> Any:
    app = load_app(app_reference)

    async def run() -> Any:
        async with app:
            return await work(app)

    return asyncio.run(run())


def _when(timestamp: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dead_letter.command("list")
@click.argument("app_reference", metavar="MODULE:APP")
@_filter_options
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
def dead_letter_list(app_reference: str, limit: int, offset: int, **options: Any) -> None:
    """List dead letters, newest first."""
    from rich.console import Console
    from rich.table import Table

    where = _filter(options)

    async def work(app: App) -> tuple[list[Any], int]:
        return await app.dead_letters.list(where, limit=limit, offset=offset), await app.dead_letters.count(
            where
        )

    letters, total = _with_app(app_reference, work)
    table = Table(title=f"dead letters ({len(letters)} of {total})")
    for column in ("id", "endpoint", "reason", "exception", "attempts", "last failed (UTC)"):
        table.add_column(column)
    for letter in letters:
        exception = f"{letter.exception_type.rpartition('.')[2]}: {letter.exception_message}"
        table.add_row(
            letter.id,
            letter.endpoint,
            letter.reason,
            exception[:80],
            str(letter.attempts),
            _when(letter.last_failed_at),
        )
    Console().print(table)


@dead_letter.command("show")
@click.argument("app_reference", metavar="MODULE:APP")
@click.argument("letter_id")
def dead_letter_show(app_reference: str, letter_id: str) -> None:
    """Everything about one dead letter: payload, headers, exception and traceback."""
    letter = _with_app(app_reference, lambda app: app.dead_letters.get(letter_id))
    if letter is None:
        raise click.ClickException(f"no dead letter {letter_id}")
    click.echo(f"id:          {letter.id}")
    click.echo(f"message id:  {letter.message_id}")
    click.echo(f"endpoint:    {letter.endpoint} (channel {letter.channel})")
    click.echo(f"reason:      {letter.reason} after {letter.attempts} attempt(s)")
    click.echo(f"failed:      first {_when(letter.first_failed_at)}, last {_when(letter.last_failed_at)} UTC")
    click.echo(f"exception:   {letter.exception_type}: {letter.exception_message}")
    click.echo("headers:")
    for name, value in sorted(letter.headers.items()):
        click.echo(f"  {name}: {value}")
    click.echo(f"payload:\n  {letter.payload}")
    click.echo(f"traceback:\n{letter.traceback}")


@dead_letter.command("replay")
@click.argument("app_reference", metavar="MODULE:APP")
@click.argument("letter_ids", nargs=-1, required=True)
def dead_letter_replay(app_reference: str, letter_ids: tuple[str, ...]) -> None:
    """Send dead letters back through their channel to their endpoint, attempts reset."""

    async def work(app: App) -> list[str]:
        return [letter_id for letter_id in letter_ids if await app.dead_letters.replay(letter_id) is None]

    missing = _with_app(app_reference, work)
    click.echo(f"replayed {len(letter_ids) - len(missing)} dead letter(s)")
    if missing:
        raise click.ClickException(f"not found: {', '.join(missing)}")


@dead_letter.command("replay-all")
@click.argument("app_reference", metavar="MODULE:APP")
@_filter_options
def dead_letter_replay_all(app_reference: str, **options: Any) -> None:
    """Replay every dead letter matching the filters (all of them without filters)."""
    where = _filter(options)
    replayed = _with_app(app_reference, lambda app: app.dead_letters.replay_all(where))
    click.echo(f"replayed {replayed} dead letter(s)")


@dead_letter.command("delete")
@click.argument("app_reference", metavar="MODULE:APP")
@click.argument("letter_ids", nargs=-1)
@_filter_options
@click.option("--all", "delete_all", is_flag=True, help="Delete every dead letter matching the filters.")
def dead_letter_delete(
    app_reference: str, letter_ids: tuple[str, ...], delete_all: bool, **options: Any
) -> None:
    """Delete dead letters by id, or all that match the filters with --all."""
    if bool(letter_ids) == delete_all:
        raise click.UsageError("give dead letter ids, or --all (with optional filters)")
    where = _filter(options)

    async def work(app: App) -> int:
        if delete_all:
            return await app.dead_letters.delete_all(where)
        return await app.dead_letters.delete(list(letter_ids))

    click.echo(f"deleted {_with_app(app_reference, work)} dead letter(s)")


if __name__ == "__main__":
    main()
