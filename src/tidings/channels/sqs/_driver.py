"""Everything that touches aiobotocore directly; imported only once an `SqsChannel` is constructed."""

from __future__ import annotations

import asyncio
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

# botocore ships no type information (aiobotocore is listed as untyped in pyproject's mypy section).
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

__all__ = ["UNREACHABLE_ERRORS", "ClientError", "error_code", "open_client"]

#: Errors that mean the server could not be reached (after botocore's own retries).
UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    BotoConnectionError,
    HTTPClientError,
    OSError,
    asyncio.TimeoutError,
)

_session: AioSession | None = None


def open_client(
    *,
    region: str,
    endpoint_url: str | None,
    credentials: dict[str, str],
    max_connections: int,
) -> Any:
    """An SQS client context (enter it to open the connection pool).

    One botocore session serves every channel of the process: loading SQS's service model once
    is what makes it worth sharing.
    """
    global _session
    if _session is None:
        _session = get_session()
    config = AioConfig(
        connect_timeout=5,
        # Above SQS's longest long poll (20 s), so a waiting receive is never cut off.
        read_timeout=40,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=max_connections,
        # The channel builds every request itself; checking each one against the model again
        # costs more client CPU than anything else it does per message.
        parameter_validation=False,
    )
    return _session.create_client(
        "sqs", region_name=region, endpoint_url=endpoint_url, config=config, **credentials
    )


def error_code(error: BaseException) -> str:
    """The SQS error code of a client error ('' for anything else), without the legacy prefix."""
    if not isinstance(error, ClientError):
        return ""
    details = error.response.get("Error", {})
    code = str(details.get("QueryErrorCode") or details.get("Code") or "")
    return code.removeprefix("AWS.SimpleQueueService.")
