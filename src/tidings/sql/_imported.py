"""SQLAlchemy's and asyncpg's classes, looked up only where something imported them already.

An object can only be an instance of a class whose module was imported. Code that merely asks whether an
object is a SQLAlchemy engine, session or error can therefore look in `sys.modules` instead of importing
SQLAlchemy, which keeps it out of PostgreSQL workers whose handlers never ask for a session.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["imported_classes", "is_engine", "is_instance", "is_integrity_error", "is_sqlalchemy_url"]


def imported_classes(module: str, *names: str) -> tuple[type[Any], ...]:
    """The classes `names` of `module` if it was imported, else none."""
    found = sys.modules.get(module)
    return () if found is None else tuple(getattr(found, name) for name in names)


def is_instance(value: object, module: str, *names: str) -> bool:
    """Whether `value` is an instance of one of the classes `names` of `module`."""
    classes = imported_classes(module, *names)
    return bool(classes) and isinstance(value, classes)


def is_integrity_error(exc: BaseException) -> bool:
    """Whether `exc` is a violated constraint (a duplicate key, say), raised through SQLAlchemy or asyncpg."""
    return is_instance(exc, "sqlalchemy.exc", "IntegrityError") or is_instance(
        exc, "asyncpg.exceptions", "IntegrityConstraintViolationError"
    )


def is_engine(value: object) -> TypeGuard[AsyncEngine]:
    return is_instance(value, "sqlalchemy.ext.asyncio", "AsyncEngine")


def is_sqlalchemy_url(value: object) -> TypeGuard[URL]:
    return is_instance(value, "sqlalchemy.engine.url", "URL")
