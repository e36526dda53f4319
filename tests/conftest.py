"""Shared fixtures: real services are required in CI and skipped (with the reason) by hand."""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test that lacks what it needs, unless in CI, where that is a failure."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def require_service(name: str, host: str, port: int) -> None:
    """Skip when a server is down, unless in CI, where a missing server is a failure."""
    if not port_open(host, port):
        skip_or_fail(f"{name} is not reachable on {host}:{port}; start it (see README, 'Running the tests')")
