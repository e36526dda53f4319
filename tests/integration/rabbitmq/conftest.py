"""Fixtures for the RabbitMQ channel's integration tests: connected channels on throw-away queues,
`rabbitmqctl`, and a private RabbitMQ node that a test may stop and start again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.conftest import skip_or_fail
from tests.servers import server_url_fixture

from tidings._clock import SystemClock
from tidings.channels.base import ChannelEnvironment

pytest.importorskip("aiormq", reason="the 'rabbitmq' extra is not installed")

import aiormq

from tidings.channels.rabbitmq import RabbitMQChannel
from tidings.channels.rabbitmq._topology import Topology

URL = "amqp://guest:guest@127.0.0.1:5672/"

OpenChannel = Callable[..., Awaitable[RabbitMQChannel]]


def environment(app_name: str = "rabbitmq-integration") -> ChannelEnvironment:
    return ChannelEnvironment(app_name=app_name, clock=SystemClock())


async def rabbitmqctl(*arguments: str, node: str | None = None) -> str:
    """Run rabbitmqctl and return what it printed; fails the test when it fails."""
    command = ["rabbitmqctl", *(["-n", node] if node else []), *arguments]
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, f"{' '.join(command)} failed: {err.decode()}"
    return out.decode()


async def queue_names(prefix: str, node: str | None = None) -> list[str]:
    listing = await rabbitmqctl("-q", "list_queues", "--no-table-headers", "name", node=node)
    return sorted(line for line in listing.split() if line.startswith(prefix))


async def connections_named(connection_name: str, node: str | None = None) -> list[str]:
    """The broker's process ids (what `close_connection` takes) of connections named so by the client."""
    listing = await rabbitmqctl(
        "-q", "list_connections", "--no-table-headers", "pid", "client_properties", node=node
    )
    marker = f'{{"connection_name","{connection_name}"}}'
    return [line.split("\t")[0] for line in listing.splitlines() if marker in line]


async def delete_topology(url: str, names: list[str]) -> None:
    async with aiormq.connect(url) as connection:
        channel = await connection.channel()
        for name in dict.fromkeys(names):
            await Topology(name, max_priority=10).delete(channel)


rabbitmq_url = server_url_fixture("rabbitmq_url", "RabbitMQ", 5672, URL)


@pytest.fixture
async def open_channel(rabbitmq_url: str) -> AsyncIterator[OpenChannel]:
    """Opens connected channels; each call without a name gets a fresh queue. All are deleted after."""
    opened: list[RabbitMQChannel] = []
    urls: dict[str, str] = {}

    async def open_channel(
        name: str | None = None,
        *,
        url: str = rabbitmq_url,
        app_name: str | None = None,
        **options: Any,
    ) -> RabbitMQChannel:
        name = name or f"it-{uuid.uuid4().hex[:12]}"
        channel = RabbitMQChannel(name, url=url, **options)
        await channel.connect(environment(app_name or f"it-{uuid.uuid4().hex[:8]}"))
        opened.append(channel)
        urls[name] = url
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()
    for url in set(urls.values()):
        # A private node that is already gone took its queues with it.
        with contextlib.suppress(OSError):
            await delete_topology(url, [name for name, at in urls.items() if at == url])


@dataclass
class PrivateNode:
    """A RabbitMQ node of its own, so that stopping it disturbs no other test."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def stop_app(self) -> None:
        await rabbitmqctl("stop_app", node=self.name)

    async def start_app(self) -> None:
        await rabbitmqctl("start_app", node=self.name)
        await rabbitmqctl("await_startup", "--timeout", "60", node=self.name)


@pytest.fixture(scope="session")
def private_node() -> Iterator[PrivateNode]:
    """Starts a throw-away RabbitMQ node on loopback (about 6 s) and stops it after the session."""
    missing = [tool for tool in ("rabbitmq-server", "rabbitmqctl") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        skip_or_fail(f"a private RabbitMQ node needs root and {', '.join(missing) or 'rabbitmq-server'}")
    port = 5691
    name = f"tidings-it-{port}@localhost"
    base = tempfile.mkdtemp(prefix="tidings-rabbitmq-")
    for directory in ("mnesia", "log"):
        os.makedirs(os.path.join(base, directory))
    # Its own config file: the system one pins the listener to the shared node's port.
    config = os.path.join(base, "rabbitmq.conf")
    with open(config, "w") as file:
        file.write(f"listeners.tcp.local = 127.0.0.1:{port}\n")
    # Debian's rabbitmq-server drops to the rabbitmq user, which must own the node's directories.
    subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", base], check=False)
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
        "RABBITMQ_LOG_BASE": os.path.join(base, "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(base, "enabled_plugins"),
        "RABBITMQ_PID_FILE": os.path.join(base, "pid"),
        "RABBITMQ_CONFIG_FILE": config,
    }
    with open(os.path.join(base, "server.log"), "wb") as log:
        server = subprocess.Popen(["rabbitmq-server"], env=env, stdout=log, stderr=log)
    try:
        # await_startup fails at once while the node has not registered with epmd yet.
        deadline = time.monotonic() + 90
        while True:
            started = subprocess.run(
                ["rabbitmqctl", "-n", name, "await_startup", "--timeout", "60"],
                capture_output=True,
                text=True,
            )
            if started.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(base, "server.log")) as log_text:
                    pytest.fail(f"the private RabbitMQ node did not start:\n{log_text.read()[-3000:]}")
            time.sleep(0.5)
        yield PrivateNode(name=name, port=port)
    finally:
        subprocess.run(["rabbitmqctl", "-n", name, "stop"], check=False, capture_output=True)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(base, ignore_errors=True)
