"""The harness: for every round, every broker and every system, enqueue, drain, pace, measure, clean up.

A system's round, each step in a process of its own:

1. `drive enqueue N`: the producer sends N messages (its clock runs from the first send to the last
   one acknowledged by its API); nothing consumes them yet.
2. Once the machine is quiet (see `wait_for_quiet`), the system's own worker command starts. The
   drain rate is N over the time from the first message handled to the last (so worker start-up
   does not count); the handler's probe files tell.
3. `drive pace M RATE`: the producer sends M stamped messages at a steady RATE to the running worker;
   the handler keeps `now - sent` for each; p50 and p99 come from those.
4. The worker gets SIGTERM (SIGKILL after 20 s); peak RSS is the highest sum of the RSS of its process
   tree, sampled every 100 ms over its whole life. `drive cleanup` deletes the queue, keys or tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from bench.suite import environment
from bench.suite.systems import System

ROOT = Path(__file__).resolve().parents[2]
_STOP_GRACE = 20.0
_TOKEN = "TOKEN"
#: A drain starts once the machine's CPUs were at most this busy over one sample, or after the
#: longest wait: what the previous system left running (a broker still deleting its queue, say)
#: would otherwise land on this one's drain, and on a system using two processes more than on one.
QUIET_PERCENT = 15.0
_QUIET_SAMPLE = 0.3
_QUIET_LONGEST_WAIT = 10.0


class RoundFailed(Exception):
    pass


@dataclass
class Round:
    """One round of one system. Rates in msgs/s, latencies in ms, memory in MiB; None if it failed."""

    key: str
    enqueue: float | None = None
    drain: float | None = None
    p50: float | None = None
    p99: float | None = None
    rss: float | None = None
    seconds: float = 0.0
    error: str | None = None
    #: Set when the drain hit the time limit: the rate is over the messages handled until then.
    partial: str | None = None


@dataclass
class Workload:
    messages: int
    latency_messages: int
    rate: float
    #: Seconds a drain may take; a slower system gets a partial rate and no latency phase.
    drain_limit: float = 600.0


class _TimedOut(Exception):
    def __init__(self, probes: list[dict[str, float]], seen: int) -> None:
        super().__init__(f"{seen} handled")
        self.probes = probes
        self.seen = seen


@dataclass
class Described:
    worker: list[str]
    settings: str


@dataclass
class _Sampler:
    pid: int
    peak: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            self.stop.wait(0.1)


def wait_for_quiet() -> float:
    """Wait until the machine is quiet (see `QUIET_PERCENT`); the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < _QUIET_LONGEST_WAIT:
        if psutil.cpu_percent(interval=_QUIET_SAMPLE) <= QUIET_PERCENT:
            break
    return time.monotonic() - started


def _environment(system: System, token: str, probe_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        **system.env,
        "BENCH_RUN": token,
        "BENCH_BROKER": system.broker,
        "BENCH_PROBE_DIR": str(probe_dir),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }


def drive(system: System, env: dict[str, str], *arguments: str, timeout: float) -> dict[str, object]:
    """Run `python -m bench.suite.drive KEY ARGUMENTS` and return its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.suite.drive", system.key, *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RoundFailed(f"`drive {' '.join(arguments)}` failed: {done.stderr.strip()[-1500:]}")
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def describe(system: System) -> Described:
    # The command is the same every round but for the run's token, put back in by `run_round`.
    env = _environment(system, _TOKEN, Path("/nonexistent"))
    answer = drive(system, env, "describe", timeout=120)
    return Described(worker=list(answer["worker"]), settings=str(answer["settings"]))  # type: ignore[call-overload]


def _probes(probe_dir: Path) -> list[dict[str, float]]:
    found = []
    for path in probe_dir.glob("*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # replaced while read: the next poll sees it
            continue
    return found


def _wait_for(
    probe_dir: Path,
    count: int,
    timeout: float,
    worker: subprocess.Popen[bytes],
    log: Path,
    *,
    partial: bool = False,
) -> list[dict[str, float]]:
    """The probes once `count` messages were handled; on timeout, RoundFailed (or _TimedOut)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        probes = _probes(probe_dir)
        seen = sum(int(p["count"]) for p in probes)
        if seen >= count:
            return probes
        if worker.poll() is not None:
            raise RoundFailed(
                f"the worker exited ({worker.returncode}) after {seen} of {count}: {_tail(log)}"
            )
        if time.monotonic() > deadline:
            if partial and seen:
                raise _TimedOut(probes, seen)
            raise RoundFailed(f"{seen} of {count} handled after {timeout:.0f} s: {_tail(log)}")
        time.sleep(0.01)


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-8:])[-1500:]
    except OSError:
        return "(no log)"


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    try:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(_STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    except ProcessLookupError:
        pass
    # Forked children that outlived their parent still belong to the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)


def _latencies(probe_dir: Path) -> list[float]:
    values: list[float] = []
    for path in probe_dir.glob("*.latencies"):
        values.extend(float(line) for line in path.read_text().split())
    return values


def _latency_phase(
    system: System,
    env: dict[str, str],
    workload: Workload,
    result: Round,
    probe_dir: Path,
    worker: subprocess.Popen[bytes],
    log: Path,
) -> None:
    paced = workload.latency_messages
    drive(system, env, "pace", str(paced), str(workload.rate), timeout=60 + paced / workload.rate)
    _wait_for(probe_dir, workload.messages + paced, 30, worker, log)
    latencies = sorted(_latencies(probe_dir))
    if len(latencies) < paced:
        raise RoundFailed(f"{len(latencies)} latencies for {paced} paced messages")
    result.p50 = latencies[int(0.50 * len(latencies))] * 1000
    result.p99 = latencies[int(0.99 * len(latencies))] * 1000


def run_round(system: System, described: Described, workload: Workload, workdir: Path) -> Round:
    """One round of one system; failures are recorded in the Round, never raised."""
    token = uuid.uuid4().hex[:10]
    probe_dir = workdir / f"{system.broker}-{system.module.rsplit('.', 1)[-1]}-{token}"
    probe_dir.mkdir(parents=True)
    env = _environment(system, token, probe_dir)
    log = probe_dir / "worker.log"
    result = Round(system.key)
    started = time.monotonic()
    worker: subprocess.Popen[bytes] | None = None
    sampler: _Sampler | None = None
    count = workload.messages
    try:
        sent = drive(system, env, "enqueue", str(count), timeout=60 + count / 20)
        result.enqueue = count / float(sent["seconds"])  # type: ignore[arg-type]
        if system.broker == "postgres":
            environment.analyze_database()
        wait_for_quiet()
        with open(log, "wb") as output:
            worker = subprocess.Popen(
                [part.replace(_TOKEN, token) for part in described.worker],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        sampler = _Sampler(worker.pid)
        threading.Thread(target=sampler.run, daemon=True).start()
        try:
            probes = _wait_for(probe_dir, count, workload.drain_limit, worker, log, partial=True)
            handled = count
        except _TimedOut as timed_out:
            probes, handled = timed_out.probes, timed_out.seen
            result.partial = f"{handled:,} of {count:,} in {workload.drain_limit:.0f} s"
        first = min(p["first"] for p in probes)
        last = max(p["last"] for p in probes)
        result.drain = handled / (last - first) if last > first else None
        if result.partial is None:  # else a backlog is left, and a latency phase would measure it
            _latency_phase(system, env, workload, result, probe_dir, worker, log)
    except (RoundFailed, subprocess.TimeoutExpired) as error:
        result.error = str(error)
    finally:
        if worker is not None:
            _stop(worker)
        if sampler is not None:
            sampler.stop.set()
            if sampler.peak:
                result.rss = sampler.peak / 2**20
        try:
            drive(system, env, "cleanup", timeout=120)
        except (RoundFailed, subprocess.TimeoutExpired) as error:
            result.error = (result.error + "; " if result.error else "") + f"cleanup: {error}"
    result.seconds = time.monotonic() - started
    return result


def median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None
