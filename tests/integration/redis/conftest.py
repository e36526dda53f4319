"""Fixtures for the Redis channel's integration tests: connected channels under a throw-away prefix,
and a private Redis server that a test may stop and start again."""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from tests.channels import opening_channels
from tests.conformance.kinds.redis import delete_keys
from tests.servers import free_port, installed, server_url_fixture, wait_until_listening

pytest.importorskip("redis", reason="the 'redis' extra is not installed")

from tidings.channels.redis import RedisChannel

REDIS_URL = "redis://127.0.0.1:6379/0"

OpenChannel = Callable[..., Awaitable[RedisChannel]]


redis_url = server_url_fixture("redis_url", "Redis", 6379, REDIS_URL)


@pytest.fixture
async def key_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    prefix = f"tidings-it-{uuid.uuid4().hex[:12]}"
    yield prefix
    await delete_keys(prefix)


@pytest.fixture
async def open_channel(redis_url: str, key_prefix: str) -> AsyncIterator[OpenChannel]:
    """Opens connected channels, each on its own connections, all on the same queue."""
    name = f"it-{uuid.uuid4().hex[:8]}"

    def make(*, lease_seconds: float = 30.0, url: str = redis_url) -> RedisChannel:
        return RedisChannel(name, url=url, lease_seconds=lease_seconds, key_prefix=key_prefix)

    async with opening_channels(make, "redis-integration") as open_channel:
        yield open_channel


class RedisServer:
    """A Redis server of the test's own, persisting every write (AOF, fsync always)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until_listening(self.process, self.port, "redis-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis flushes the AOF and exits
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    binary = installed("redis-server")
    with tempfile.TemporaryDirectory(prefix="tidings-redis-") as directory:
        server = RedisServer(binary, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
