"""Everything that touches redis-py directly; imported only once a `RedisChannel` is constructed."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._codec import bulk

__all__ = ["RETRYABLE_ERRORS", "AfterPop", "Scripts", "open_client", "redact"]

#: Errors after which the same call can be tried again on a fresh connection.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)


def open_client(url: str) -> Redis:
    """A pooled client that reports a lost connection at once; the channel decides how to retry."""
    return Redis.from_url(
        url,
        decode_responses=False,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=5.0,
        socket_keepalive=True,
    )


def redact(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Scripts:
    """Runs a channel's Lua scripts by their SHA, and its plain commands, on connections of its own.

    redis-py's command path (a pool checkout with its observability hooks, a retry wrapper, packing
    argument by argument) costs about 1,800 bytecodes a call. These calls have a fixed head
    (EVALSHA, the SHA, the channel's keys), packed once, and a few string arguments, so each call is
    packed here and written and read on a redis-py connection directly. A connection that fails is
    disconnected by redis-py and reconnects on its next use; the channel decides whether to try
    again.
    """

    def __init__(self, client: Redis, sources: Mapping[str, str], keys: Sequence[str]) -> None:
        self._client = client
        self._sources = dict(sources)
        fixed = bulk(str(len(keys))) + b"".join(bulk(key) for key in keys)
        self._heads = {
            name: bulk(b"EVALSHA") + bulk(hashlib.sha1(source.encode()).hexdigest()) + fixed
            for name, source in sources.items()
        }
        self._head_size = 3 + len(keys)
        self._idle: list[AbstractConnection] = []
        self._all: set[AbstractConnection] = set()

    def _pack(
        self, name: str, args: Sequence[bytes | str | int], bulks: bytes = b"", bulk_count: int = 0
    ) -> bytes:
        parts = [b"*%d\r\n" % (self._head_size + len(args) + bulk_count), self._heads[name]]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts += (b"$%d\r\n" % len(data), data, b"\r\n")
        parts.append(bulks)
        return b"".join(parts)

    async def run(
        self, name: str, args: Sequence[bytes | str | int], bulks: bytes = b"", bulk_count: int = 0
    ) -> Any:
        """Run script `name` with `args`, then `bulk_count` more arguments already packed as RESP
        bulk strings in `bulks`."""
        command = self._pack(name, args, bulks, bulk_count)
        try:
            return await self._call(command)
        except NoScriptError:
            # A server that restarted, or flushed its scripts: load it, then the same call again.
            await self._client.script_load(self._sources[name])
            return await self._call(command)

    async def commands(self, heads: Sequence[Sequence[str]], bulks: bytes, bulk_count: int) -> Any:
        """Plain commands written together, each `head` (a command's name and first arguments)
        followed by the same `bulk_count` arguments, already packed as RESP bulk strings in `bulks`;
        the last one's reply."""
        packed = b"".join(
            b"".join([b"*%d\r\n" % (len(head) + bulk_count), *(bulk(part) for part in head), bulks])
            for head in heads
        )
        return await self._call(packed, len(heads))

    def _checkout(self) -> AbstractConnection:
        if self._idle:
            return self._idle.pop()
        # redis-py leaves make_connection unannotated; it returns the pool's connection class.
        connection: AbstractConnection = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        self._all.add(connection)
        return connection

    async def _call(self, command: bytes, replies: int = 1) -> Any:
        """Write `command` (one or more packed commands) and read their `replies`; the last one."""
        connection = self._checkout()
        try:
            await connection.send_packed_command(command, check_health=False)
            failed: ResponseError | None = None
            for _ in range(replies):
                try:
                    reply = await connection.read_response()
                except ResponseError as error:  # read whole: what follows stays in step
                    failed = failed or error
            if failed is not None:
                raise failed
            return reply
        finally:
            self._idle.append(connection)

    def after_pop(self, key: str, timeout: float, name: str, args: Sequence[bytes | str | int]) -> AfterPop:
        """Script `name`, run by the server once `BLPOP key timeout` returns; see `AfterPop`."""
        return AfterPop(self, key, timeout, name, args)

    async def close(self) -> None:
        connections, self._all, self._idle = self._all, set(), []
        for connection in connections:
            await connection.disconnect()


class AfterPop:
    """`BLPOP key timeout`, then a script, written together on one connection.

    The server blocks the connection in the pop and runs the script the moment the pop returns,
    with no round trip between them: a receiver waiting this way gets its claim's reply as soon as a
    wake-up token arrives. `interrupt()` ends the wait early; the script still runs, and `run`
    returns its reply.
    """

    def __init__(
        self, scripts: Scripts, key: str, timeout: float, name: str, args: Sequence[bytes | str | int]
    ) -> None:
        self._scripts = scripts
        self._name, self._args = name, args
        # CLIENT ID first: its reply comes at once and names the connection to unblock.
        self._command = (
            b"*2\r\n" + bulk(b"CLIENT") + bulk(b"ID")
            + b"*3\r\n" + bulk(b"BLPOP") + bulk(key) + bulk(repr(max(timeout, 0.001)))
            + scripts._pack(name, args)
        )  # fmt: skip
        self._client_id: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def run(self) -> Any:
        """The script's reply, however the wait ended."""
        scripts = self._scripts
        connection = scripts._checkout()
        try:
            await connection.send_packed_command(self._command, check_health=False)
            self._client_id.set_result(await connection.read_response())
            try:
                await connection.read_response()  # the token, or nothing when the wait ended otherwise
            except ResponseError:
                await connection.disconnect()  # the script's reply would still be on the wire
                raise
            try:
                return await connection.read_response()
            except NoScriptError:
                await scripts._client.script_load(scripts._sources[self._name])
                return await scripts._call(scripts._pack(self._name, self._args))
        finally:
            scripts._idle.append(connection)
            if not self._client_id.done():
                self._client_id.cancel()

    async def interrupt(self) -> None:
        """End the wait in the server now, if it still goes on."""
        await asyncio.wait([self._client_id])
        if not self._client_id.cancelled():
            await self._scripts._client.client_unblock(self._client_id.result())
