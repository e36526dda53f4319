"""The app: which channels exist and where they live. Handler code never changes with this file.

SHOP_BROKER=sql (default, embedded SQLite, no server), redis or rabbitmq picks where the inventory
channel behind the outbox lives.
"""

from __future__ import annotations

import os

from tidings import App, Backoff, Channel, CombinedChannel, RetryPolicy
from tidings.channels.sql import SqlChannel

from . import handlers

DEFAULT_DATABASE = "sqlite+aiosqlite:///shop.db"
DATABASE = os.environ.get("SHOP_DATABASE", DEFAULT_DATABASE)


def inventory_channel() -> Channel:
    broker = os.environ.get("SHOP_BROKER", "sql")
    if broker == "redis":
        from tidings.channels.redis import RedisChannel

        return RedisChannel("inventory_queue")
    if broker == "rabbitmq":
        from tidings.channels.rabbitmq import RabbitMQChannel

        return RabbitMQChannel("inventory_queue")
    return SqlChannel("inventory_queue")


app = App(
    "shop",
    handlers=[handlers],
    channels=[
        SqlChannel("notifications"),
        SqlChannel("outbox"),
        inventory_channel(),
        CombinedChannel("inventory", ["outbox", "inventory_queue"]),
    ],
    database=DATABASE,
    services={handlers.Warehouse: handlers.Warehouse()},
    # Quick retries for the demo: 0.2 s, then 0.4 s, then the dead letter.
    channel_retry_policies={
        "notifications": RetryPolicy(max_attempts=3, backoff=Backoff.exponential(0.2, 2, jitter=0))
    },
)
