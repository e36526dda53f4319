"""An SQS-compatible server for the tests, started on loopback by the test process itself.

First choice is fauxqs (npm, declared in `package.json` beside this file): it is installed here with
`npm ci` on first use when `node_modules` is missing, and run by `serve.mjs` on 127.0.0.1 with a port
the system picks. If Node or the install is not available, moto's server (`pip install
'moto[server]'`) is the fallback; it is much slower, which the SQS tests allow for by keeping their
volumes small. `TIDINGS_SQS_SERVER` chooses: `fauxqs`, `moto`, or the URL of a server already running.

One server serves the whole test process (each test uses fresh queues) and is stopped at exit; the
fauxqs process also exits by itself when its parent goes away, since it watches its stdin.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.servers import ServerUnavailable, StartedOnFirstUse, end_process

__all__ = ["CREDENTIALS", "ServerUnavailable", "SqsServer", "require_sqs_server", "start_fauxqs"]

HERE = Path(__file__).resolve().parent
#: Any key works on the test servers; giving them keeps botocore from looking for real credentials.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
_START_TIMEOUT = 30.0
_INSTALL_TIMEOUT = 300.0


@dataclass
class SqsServer:
    endpoint_url: str
    kind: str
    stop: Callable[[], None]


def _install_fauxqs() -> None:
    if (HERE / "node_modules" / "fauxqs" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ServerUnavailable("npm is not installed, so fauxqs cannot be installed")
    # Several test processes may start at once: one installs, the others wait for it.
    with open(HERE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (HERE / "node_modules" / "fauxqs" / "package.json").exists():
            return
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise ServerUnavailable(f"`npm ci` in {HERE} failed: {done.stderr.strip()[-2000:]}")


def start_fauxqs(port: int = 0) -> SqsServer:
    """Install (if needed) and start fauxqs on 127.0.0.1 (on `port`, or a free one when 0).

    Raises ServerUnavailable with the reason when it cannot.
    """
    node = shutil.which("node")
    if node is None:
        raise ServerUnavailable("Node.js is not installed, so fauxqs cannot run")
    _install_fauxqs()
    log = tempfile.NamedTemporaryFile(prefix="fauxqs-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [node, str(HERE / "serve.mjs")],
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "SQS_SERVER_PORT": str(port)},
    )
    assert process.stdout is not None
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(_START_TIMEOUT):
            line = process.stdout.readline()
    if not line:
        process.kill()
        process.wait()
        log.close()
        raise ServerUnavailable(f"fauxqs did not start: {Path(log.name).read_text()[-2000:]}")
    port = json.loads(line)["port"]

    def stop() -> None:
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        end_process(process, log)

    return SqsServer(f"http://127.0.0.1:{port}", "fauxqs", stop)


def start_moto() -> SqsServer:
    """Start moto's threaded server on 127.0.0.1; raises ServerUnavailable if moto is missing."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as error:
        raise ServerUnavailable(f"moto's server is not installed ({error})") from error
    # Tests purge their queues more often than AWS's once a minute, as fauxqs allows.
    os.environ.setdefault("MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR", "false")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return SqsServer(f"http://{host}:{port}", "moto", server.stop)


def _start() -> SqsServer:
    choice = os.environ.get("TIDINGS_SQS_SERVER", "")
    if choice.startswith(("http://", "https://")):
        return SqsServer(choice, "external", lambda: None)
    if choice == "moto":
        return start_moto()
    if choice == "fauxqs":
        return start_fauxqs()
    try:
        return start_fauxqs()
    except (ServerUnavailable, OSError, subprocess.SubprocessError) as fauxqs_error:
        try:
            return start_moto()
        except ServerUnavailable as moto_error:
            raise ServerUnavailable(f"{fauxqs_error}; and {moto_error}") from moto_error


_server = StartedOnFirstUse(
    _start,
    "SQS-compatible server",
    "Install Node.js 20+ and npm (fauxqs is then installed from tests/sqs_server/package.json), "
    "or pip install 'moto[server]'",
)


def require_sqs_server() -> SqsServer:
    """The test process's SQS server, started on first use; skips (fails in CI) when there is none."""
    return _server.require()
