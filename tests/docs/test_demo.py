"""`make demo` tells its story, and the same handlers run with the inventory channel on any broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_service

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


@pytest.mark.parametrize(
    ("broker", "service"),
    [
        ("sql", None),
        pytest.param("redis", ("Redis", 6379), marks=pytest.mark.redis),
        pytest.param("rabbitmq", ("RabbitMQ", 5672), marks=pytest.mark.rabbitmq),
    ],
)
def test_the_demo_runs_end_to_end_with_its_inventory_channel_on(
    broker: str, service: tuple[str, int] | None, tmp_path: Path
) -> None:
    if service is not None:
        require_service(service[0], "127.0.0.1", service[1])
    environment = {
        **os.environ,
        "SHOP_BROKER": broker,
        "SHOP_DATABASE": f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}",
        "COLUMNS": "120",
    }

    ran = subprocess.run(
        [sys.executable, "-m", "shop"], cwd=SHOP, env=environment, capture_output=True, text=True, timeout=120
    )

    assert ran.returncode == 0, ran.stderr
    output = ran.stdout
    assert "a duplicate order id fails" in output
    assert output.count("receipt for o-") == 2  # the sibling subscriber ran once per order
    assert output.count("stock for o-") == 2  # through the outbox and the inventory channel
    assert "4 retried, 2 dead-lettered" in output
    assert "dead letters left: 0" in output
    assert "orders in the database: 2" in output
