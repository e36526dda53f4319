"""The SQL channel: messages wait in a table of the app's database (PostgreSQL, MySQL/MariaDB, SQLite)."""

from __future__ import annotations

from tidings.channels.sql.channel import SqlChannel

__all__ = ["SqlChannel"]
