"""What every system's handler calls: counts messages and keeps latencies, the same cheap way everywhere.

`handled(sent)` takes a lock, bumps a counter and remembers the time of the first and the last message;
with `sent` > 0 (the steady-rate phase) it also keeps `now - sent`. A daemon thread of the handling
process writes the counts to `$BENCH_PROBE_DIR/<pid>.json` every 20 ms (write and rename) and appends
new latencies to `<pid>.latencies`, so the handler itself never touches a file or the network. Forked
worker processes start their own thread.
"""

from __future__ import annotations

import json
import os
import threading
import time

_FLUSH_EVERY = 0.02


class _Probe:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies: list[float] = []
        self.directory = os.environ["BENCH_PROBE_DIR"]
        self.written = -1
        threading.Thread(target=self._flush_forever, name="bench-probe", daemon=True).start()

    def handled(self, sent: float) -> None:
        now = time.time()
        with self.lock:
            if not self.count:
                self.first = now
            self.count += 1
            self.last = now
            if sent:
                self.latencies.append(now - sent)

    def _flush_forever(self) -> None:
        base = os.path.join(self.directory, str(self.pid))
        while True:
            time.sleep(_FLUSH_EVERY)
            with self.lock:
                if self.count == self.written:
                    continue
                state = {"count": self.count, "first": self.first, "last": self.last}
                self.written = self.count
                fresh, self.latencies = self.latencies, []
            if fresh:
                with open(base + ".latencies", "a") as file:
                    file.write("".join(f"{seconds!r}\n" for seconds in fresh))
            with open(base + ".tmp", "w") as file:
                json.dump(state, file)
            os.replace(base + ".tmp", base + ".json")


_probe: _Probe | None = None
_lock = threading.Lock()


def handled(sent: float) -> None:
    """Count one handled message; `sent` is the producer's time.time() stamp, or 0 in the drain phase."""
    global _probe
    probe = _probe
    if probe is None or probe.pid != os.getpid():  # first call, or first call after a fork
        with _lock:
            if _probe is None or _probe.pid != os.getpid():
                _probe = _Probe()
            probe = _probe
    probe.handled(sent)
