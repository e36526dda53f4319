"""Schedules: run a function, or send the message it returns, every interval or on a cron expression.

Tick times are the same in every worker (intervals align to the epoch, cron to its expression), and
each tick is claimed in a lock before it fires, so a schedule fires once per tick however many workers
run it. With `catch_up=True`, ticks missed while no worker ran fire when one starts; by default they
are skipped. Schedules run inside `tidings run` (and `app.run(...)`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, final
from zoneinfo import ZoneInfo

from tidings._decorators import find_spec, spec_of
from tidings.exceptions import ConfigurationError

if TYPE_CHECKING:
    from tidings._app import App
    from tidings._registry import ParameterResolver, Provider

__all__ = ["InMemoryScheduleLock", "Schedule", "ScheduleLock", "run_schedules", "scheduled"]

logger = logging.getLogger("tidings.schedules")

F = TypeVar("F", bound=Callable[..., Any])

_OPTION = "schedule"
#: Most missed ticks fired in one catch-up, so a long outage does not start a storm.
_MAX_CATCH_UP = 1000


@final
@dataclass(frozen=True)
class _Trigger:
    every: float | None
    cron: str | None
    timezone: str
    catch_up: bool
    name: str | None

    def next_after(self, moment: float) -> float:
        """The first tick strictly after `moment` (seconds since the epoch)."""
        if self.every is not None:
            return (moment // self.every + 1) * self.every
        from croniter import croniter

        assert self.cron is not None
        start = datetime.fromtimestamp(moment, ZoneInfo(self.timezone))
        return float(croniter(self.cron, start).get_next(float))


def scheduled(
    *,
    every: timedelta | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    catch_up: bool = False,
    name: str | None = None,
) -> Callable[[F], F]:
    """Run the function on a schedule; if it returns a message, send it.

    A returned message goes to its command handler if it has one, else it is published as an event.
    Parameters are injected as for handlers (buses, services, a database session); as for handlers, a
    function that takes the session runs in one transaction with the messages it sends.
    """
    if (every is None) == (cron is None):
        raise ValueError("scheduled() takes exactly one of every= or cron=")
    if every is not None and every.total_seconds() <= 0:
        raise ValueError(f"a schedule interval must be positive, got {every}")
    if cron is not None:
        from croniter import croniter

        if not croniter.is_valid(cron):
            raise ValueError(f"not a valid cron expression: {cron!r}")
    ZoneInfo(timezone)  # an unknown zone fails here, at import time
    trigger = _Trigger(every.total_seconds() if every else None, cron, timezone, catch_up, name)

    def mark(function: F) -> F:
        spec_of(function).options[_OPTION] = trigger
        return function

    return mark


class ScheduleLock(Protocol):
    """Lets one worker claim a schedule's tick; the database's lock makes this hold across processes."""

    async def claim(self, schedule: str, tick: float) -> bool:
        """Claim `tick`; False if some worker already did."""
        ...

    async def last_tick(self, schedule: str) -> float | None:
        """The latest claimed tick, for catching up."""
        ...


@final
class InMemoryScheduleLock:
    """Claims in a dict: one process only; for tests and apps without a database."""

    def __init__(self) -> None:
        self._claimed: dict[str, set[float]] = {}

    async def claim(self, schedule: str, tick: float) -> bool:
        ticks = self._claimed.setdefault(schedule, set())
        if tick in ticks:
            return False
        ticks.add(tick)
        return True

    async def last_tick(self, schedule: str) -> float | None:
        ticks = self._claimed.get(schedule)
        return max(ticks) if ticks else None


@final
class Schedule:
    """One scheduled function, ready to fire."""

    def __init__(
        self, name: str, function: Callable[..., Any], trigger: _Trigger, providers: tuple[Provider, ...]
    ) -> None:
        self.name = name
        self.function = function
        self.trigger = trigger
        self.providers = providers
        self._uses_database: bool | None = None

    def __repr__(self) -> str:
        when = f"every {self.trigger.every:g}s" if self.trigger.every else f"cron {self.trigger.cron!r}"
        return f"<Schedule {self.name!r} {when}>"

    async def fire(self, app: App) -> None:
        if app.database is not None:
            if self._uses_database is None:
                from tidings.sql._integration import asks_for_database

                self._uses_database = asks_for_database(self.function)
            # As for handlers: a function that uses the database runs in one transaction with what
            # it sends; one that does not opens none.
            if self._uses_database:
                async with app.transaction():
                    await self._call(app)
                return
        await self._call(app)

    async def _call(self, app: App) -> None:
        arguments = [provide(None) for provide in self.providers]  # type: ignore[arg-type]
        if inspect.iscoroutinefunction(self.function):
            result = await self.function(*arguments)
        else:
            result = await asyncio.get_running_loop().run_in_executor(
                app.executor, lambda: self.function(*arguments)
            )
        if result is None:
            return
        if app.routes.by_class("command", type(result)):
            await app.commands.send(result)
        else:
            await app.events.publish(result)


def collect_schedules(
    handlers: Iterable[Any], resolvers: Iterable[ParameterResolver], services: Mapping[type[Any], Any]
) -> list[Schedule]:
    """Every scheduled function among the app's handlers (functions and module members)."""
    from tidings._registry import _plan_parameter

    functions: list[Callable[..., Any]] = []
    for item in handlers:
        members = vars(item).values() if inspect.ismodule(item) else [item]
        functions.extend(member for member in members if callable(member) and _trigger_of(member))
    schedules = []
    resolvers = list(resolvers)
    for function in dict.fromkeys(functions):
        trigger = _trigger_of(function)
        assert trigger is not None
        name = trigger.name or function.__qualname__
        hints = typing.get_type_hints(function, include_extras=True)
        for parameter_name, hint in hints.items():
            if parameter_name != "return" and _is_message_only(hint):
                raise ConfigurationError(
                    f"schedule {name} asks for '{parameter_name}', which only exists while handling a "
                    f"message; a schedule gets buses, services and the database session"
                )
        providers = tuple(
            _plan_parameter(
                name, parameter_name, parameter, hints.get(parameter_name, Any), resolvers, services
            )
            for parameter_name, parameter in inspect.signature(function).parameters.items()
        )
        schedules.append(Schedule(name, function, trigger, providers))
    names = [schedule.name for schedule in schedules]
    for name in names:
        if names.count(name) > 1:
            raise ConfigurationError(f"two schedules are named '{name}'; give one scheduled(name=...)")
    return schedules


def _is_message_only(hint: Any) -> bool:
    from tidings._context import MessageContext
    from tidings._registry import Header

    if typing.get_origin(hint) is typing.Annotated:
        return any(isinstance(extra, Header) for extra in hint.__metadata__)
    return hint is MessageContext or typing.get_origin(hint) in (Mapping, dict)


def _trigger_of(value: Any) -> _Trigger | None:
    spec = find_spec(value)
    return None if spec is None else spec.options.get(_OPTION)


async def run_schedules(app: App, schedules: list[Schedule], lock: ScheduleLock) -> None:
    """Fire every schedule on its ticks until cancelled."""
    await asyncio.gather(*(_run_one(app, schedule, lock) for schedule in schedules))


async def _run_one(app: App, schedule: Schedule, lock: ScheduleLock) -> None:
    clock = app.clock
    trigger = schedule.trigger
    now = clock.now()
    if trigger.catch_up:
        last = await lock.last_tick(schedule.name)
        tick = trigger.next_after(last if last is not None else now)
        missed = 0
        while tick <= now and missed < _MAX_CATCH_UP:
            await _fire(app, schedule, lock, tick)
            tick = trigger.next_after(tick)
            missed += 1
    else:
        tick = trigger.next_after(now)
    while True:
        await clock.sleep(tick - clock.now())
        await _fire(app, schedule, lock, tick)
        # Catching up fires every tick in turn; otherwise ticks missed while busy are skipped.
        tick = trigger.next_after(tick if trigger.catch_up else max(tick, clock.now()))


async def _fire(app: App, schedule: Schedule, lock: ScheduleLock, tick: float) -> None:
    try:
        if not await lock.claim(schedule.name, tick):
            return
        logger.info("schedule %s fires for %s", schedule.name, datetime.fromtimestamp(tick, UTC).isoformat())
        await schedule.fire(app)
    except Exception:
        logger.exception("schedule %s failed at tick %s", schedule.name, tick)
