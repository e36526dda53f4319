"""The producer side of one system, in a process of its own (the harness starts it).

    python -m bench.suite.drive 'BROKER/LABEL' describe | enqueue COUNT | pace COUNT RATE | cleanup

The environment carries the run (BENCH_RUN, BENCH_PROBE_DIR); the answer is one JSON line on stdout.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
from typing import Any

from bench.suite.systems import BY_KEY


def _call(function: Any, *arguments: Any) -> Any:
    if inspect.iscoroutinefunction(function):
        return asyncio.run(function(*arguments))
    return function(*arguments)


def main(key: str, action: str, *arguments: str) -> None:
    system = BY_KEY[key]
    os.environ.setdefault("BENCH_BROKER", system.broker)
    os.environ.update(system.env)
    module = importlib.import_module(system.module)
    answer: dict[str, Any] = {}
    if action == "describe":
        settings = module.settings() if hasattr(module, "settings") else module.SETTINGS
        answer = {"worker": module.worker_command(), "settings": settings}
    elif action == "enqueue":
        answer = {"seconds": _call(module.enqueue, int(arguments[0]))}
    elif action == "pace":
        _call(module.pace, int(arguments[0]), float(arguments[1]))
    elif action == "cleanup":
        _call(module.cleanup)
    else:
        raise SystemExit(f"unknown action {action!r}")
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
