"""What the NATS integration tests share: helpers, a TCP proxy whose connections can be cut, and a
private NATS server that can be killed and started again.

(The directory has no `__init__.py`: as a package named `nats` it would hide nats-py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.servers import free_port, wait_until_listening

from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels.base import ChannelEnvironment, Delivery
from tidings.channels.nats import NatsChannel

OpenChannel = Callable[..., Awaitable[NatsChannel]]


def environment() -> ChannelEnvironment:
    return ChannelEnvironment(app_name="nats-integration", clock=SystemClock())


def message(n: int, **headers: str) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), {h.MESSAGE_ID: f"m-{n}", h.ENDPOINT: "ep", **headers})


def number(delivery: Delivery) -> int:
    return int(delivery.envelope.body.decode().split(":")[1].rstrip("}"))


def due_in(seconds: float) -> dict[str, str]:
    return {h.DELIVER_AT: repr(time.time() + seconds)}


async def drain(channel: NatsChannel, expected: set[int], timeout: float, handling: float = 0.0) -> list[int]:
    """Receive and ack until every expected message was handled at least once; all handled numbers."""
    handled: list[int] = []
    deadline = time.monotonic() + timeout
    while not expected <= set(handled) and time.monotonic() < deadline:
        deliveries = await channel.receive(100, timeout=0.5)
        await asyncio.sleep(handling)
        handled += (number(d) for d in deliveries)
        await channel.ack(deliveries)
    return handled


async def receive_unacked(channel: NatsChannel, count: int, timeout: float = 10.0) -> list[Delivery]:
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(deliveries) < count and time.monotonic() < deadline:
        deliveries += await channel.receive(count - len(deliveries), timeout=0.5)
    return deliveries


class Proxy:
    """A TCP proxy in front of a NATS server; `cut()` drops every connection through it at once.

    Cutting aborts both sockets of each pair, so the client sees its connection end and the server
    sees its client go, as when a network link or a load balancer fails while the server keeps running.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        for source, target in ((reader, upstream_writer), (upstream_reader, writer)):
            pipe = asyncio.ensure_future(self._pipe(source, target))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                target.write(data)
                await target.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            target.transport.abort()
            self._writers.discard(target)

    def cut(self) -> int:
        """Abort every open connection; returns how many client connections there were."""
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.transport.abort()
        return len(writers) // 2

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


class NatsServer:
    """A NATS server with JetStream of the test's own, storing streams in a directory that outlives it."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_listening(self.process, self.port, "nats-server")

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, no orderly shutdown of the store."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None
