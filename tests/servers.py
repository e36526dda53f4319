"""What the tests that start servers of their own share: free ports, waiting for a server to listen,
stopping it, one server for the whole test process, and the fixture that checks a shared server is up."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import IO, Generic, Protocol, TypeVar

import pytest

from tests.conftest import port_open, require_service, skip_or_fail


class ServerUnavailable(Exception):
    """A server the tests need could not be started; the message says why."""


class Stoppable(Protocol):
    stop: Callable[[], None]


Server = TypeVar("Server", bound=Stoppable)


class StartedOnFirstUse(Generic[Server]):
    """One server for the whole test process: started when a test first needs it, stopped at exit.
    When it cannot start, that test and every later one skip (fail in CI) without trying again."""

    def __init__(self, start: Callable[[], Server], what: str, advice: str) -> None:
        self._start = start
        #: What the server is, and what to install when it cannot start: the skip reason says both.
        self._what, self._advice = what, advice
        self.server: Server | None = None
        self._failure: str | None = None

    def require(self) -> Server:
        if self.server is None and self._failure is None:
            try:
                self.server = self._start()
            except (ServerUnavailable, OSError, subprocess.SubprocessError) as error:
                self._failure = str(error)
            else:
                atexit.register(self.server.stop)
        if self.server is None:
            skip_or_fail(f"no {self._what} could be started: {self._failure}. {self._advice}")
        return self.server


def installed(program: str, also_in: str | None = None) -> str:
    """The path of the server `program` (looked for on PATH, then in `also_in`) that a restart test
    starts a server of its own with; without it the test skips, or fails in CI."""
    binary = shutil.which(program) or (also_in and shutil.which(program, path=also_in))
    if not binary:
        skip_or_fail(f"{program} is not installed; the restart test starts a server of its own")
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_listening(process: subprocess.Popen[bytes], port: int, name: str) -> None:
    """Wait up to 10 s for `process` to accept connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + 10
    while not port_open("127.0.0.1", port, timeout=0.1):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{name} did not start on port {port}")
        time.sleep(0.02)


def end_process(process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    """Wait for a server that was asked to exit (killing it after 5 s), then delete its log."""
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()
    with contextlib.suppress(OSError):
        os.unlink(log.name)


def server_url_fixture(fixture_name: str, server: str, port: int, url: str) -> Callable[[], str]:
    """A fixture named `fixture_name` giving `url` once `server` answers on 127.0.0.1:`port`; without
    it the test skips, or fails in CI."""

    @pytest.fixture(name=fixture_name)
    def server_url() -> str:
        require_service(server, "127.0.0.1", port)
        return url

    return server_url
