"""Database URLs, read without importing SQLAlchemy.

On PostgreSQL, tidings reaches its own tables through asyncpg alone, and a worker whose handlers never
ask for a session never needs SQLAlchemy: importing it only to read the URL would cost the worker some
20 MiB. The grammar is SQLAlchemy's, `backend+driver://user:password@host:port/database?key=value`,
and it is read the same way (user, password and database percent-decoded, blank query values dropped,
a repeated query key keeping every value), so that these connections and the app's engine always
reach the same server as the same user.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from tidings.exceptions import ConfigurationError

__all__ = ["DatabaseUrl", "parse_url"]

#: Query keys that SQLAlchemy's asyncpg dialect keeps for itself instead of passing to `asyncpg.connect`.
_DIALECT_ONLY_KEYS = frozenset({"prepared_statement_cache_size", "prepared_statement_name_func"})
#: Query keys that make SQLAlchemy's asyncpg dialect compose hosts and ports its own way.
_HOST_KEYS = frozenset({"host", "port"})


@dataclass(frozen=True)
class DatabaseUrl:
    """The parts of a database URL; `text` is the URL as given (with a driver filled in by the caller)."""

    text: str
    drivername: str
    username: str | None
    password: str | None
    host: str | None
    port: int | None
    database: str | None
    query: tuple[tuple[str, str], ...]

    @property
    def backend_name(self) -> str:
        """`postgresql`, `mysql`, `mariadb`, `sqlite`, ...: the part of the scheme before `+`."""
        return self.drivername.partition("+")[0]

    @property
    def driver_name(self) -> str | None:
        """The async driver named after `+`, if any."""
        return self.drivername.partition("+")[2] or None

    def with_driver(self, driver: str) -> DatabaseUrl:
        drivername = f"{self.backend_name}+{driver}"
        rest = self.text.partition("://")[2]
        return parse_url(f"{drivername}://{rest}")

    def render(self, *, hide_password: bool) -> str:
        """The URL as text; with `hide_password`, the password reads `***` (for messages and logs)."""
        if not hide_password or self.password is None:
            return self.text
        userinfo, rest = _split_userinfo(self.text.partition("://")[2])
        user = (userinfo or "").partition(":")[0]
        return f"{self.drivername}://{user}:***@{rest}"

    def query_value(self, key: str) -> str | None:
        for name, value in self.query:
            if name == key:
                return value
        return None

    def asyncpg_arguments(self, connect_args: Mapping[str, Any]) -> dict[str, Any] | None:
        """Keyword arguments for `asyncpg.connect` that mean what SQLAlchemy's asyncpg dialect makes of
        this URL and the engine's `connect_args`; None where only that dialect can open the connection
        (a query composing several hosts, a custom `async_creator_fn`)."""
        keys = [key for key, _ in self.query]
        if _HOST_KEYS.intersection(keys) or len(set(keys)) != len(keys) or "async_creator_fn" in connect_args:
            return None
        given = {
            "host": self.host,
            "database": self.database,
            "user": self.username,
            "password": self.password,
            "port": self.port,
        }
        arguments: dict[str, Any] = {name: value for name, value in given.items() if value}
        arguments.update(self.query)
        arguments.update(connect_args)
        return {key: value for key, value in arguments.items() if key not in _DIALECT_ONLY_KEYS}


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """`user:password` and what follows its `@`; the user ends at the first ':' or '/', the password
    at the first '@'."""
    at = rest.find("@")
    if at != -1 and "/" not in rest[:at].partition(":")[0]:
        return rest[:at], rest[at + 1 :]
    return None, rest


def _host_end(text: str) -> int:
    """Where the host and port end in `text` (which starts with them)."""
    start = max(text.find("]"), 0) if text.startswith("[") else 0
    ends = [index for index in (text.find("/", start), text.find("?", start)) if index != -1]
    return min(ends, default=len(text))


def parse_url(text: str) -> DatabaseUrl:
    """The parts of `text`; raises `ConfigurationError` for text that is not a database URL."""
    drivername, separator, rest = text.partition("://")
    if not separator or not drivername or not all(c.isalnum() or c in "_+" for c in drivername):
        raise ConfigurationError(
            f"{text!r} is not a database URL; write it as backend+driver://user:password@host:port/database"
        )
    username = password = None
    userinfo, rest = _split_userinfo(rest)
    if userinfo is not None:
        user_part, has_password, password_part = userinfo.partition(":")
        username = unquote(user_part)
        password = unquote(password_part) if has_password else None
    end = _host_end(rest)
    host_port, tail = rest[:end], rest[end:]
    if host_port.startswith("["):
        host, _, after = host_port[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = host_port.partition(":")
    try:
        port = int(port_text) if port_text else None
    except ValueError:
        raise ConfigurationError(f"the port of {text!r} is not a number") from None
    database: str | None = None
    query_text = ""
    if tail.startswith("/"):
        database_part, _, query_text = tail[1:].partition("?")
        database = unquote(database_part)
    elif tail.startswith("?"):
        query_text = tail[1:]
    return DatabaseUrl(
        text=text,
        drivername=drivername,
        username=username,
        password=password,
        host=host or None,
        port=port,
        database=database,
        query=tuple(parse_qsl(query_text)),
    )
