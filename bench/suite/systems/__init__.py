"""Every system the bench runs, by broker: the raw loop first, then tidings, then the peers.

Each module here is imported only in the processes of its own system (producer, worker), never by the
harness. A module provides `worker_command()`, `settings()` or `SETTINGS`, `enqueue(count)` (returns the
seconds the sends took), `pace(count, rate)` and `cleanup()`; the async ones are run with asyncio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class System:
    broker: str
    label: str
    module: str
    role: str  # raw, tidings, variant (tidings with a setting changed, for diagnosis) or peer
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.broker}/{self.label}"


def _systems() -> list[System]:
    raw, tidings, peer = "raw", "tidings", "peer"
    here = "bench.suite.systems."
    found = [
        System("rabbitmq", "raw aio-pika", here + "raw_rabbitmq", raw),
        System("rabbitmq", "tidings", here + "tidings_app", tidings),
        System("rabbitmq", "Celery", here + "peer_celery", peer),
        System("rabbitmq", "Dramatiq", here + "peer_dramatiq", peer),
        System("rabbitmq", "FastStream", here + "peer_faststream", peer),
        System("rabbitmq", "Taskiq", here + "peer_taskiq", peer),
        System("redis", "raw redis-py batch", here + "raw_redis", raw, {"BENCH_MODE": "batch"}),
        System("redis", "raw redis-py BRPOP", here + "raw_redis", raw, {"BENCH_MODE": "brpop"}),
        System("redis", "tidings", here + "tidings_app", tidings),
        System("redis", "Celery", here + "peer_celery", peer),
        System("redis", "Dramatiq", here + "peer_dramatiq", peer),
        System("redis", "FastStream", here + "peer_faststream", peer),
        System("redis", "Taskiq", here + "peer_taskiq", peer),
        System("postgres", "raw asyncpg", here + "raw_postgres", raw),
        System("postgres", "tidings", here + "tidings_app", tidings),
        System("postgres", "tidings, dedup off", here + "tidings_app", "variant", {"BENCH_DEDUPLICATE": "0"}),
        System("postgres", "procrastinate", here + "peer_procrastinate", peer),
        System("postgres", "pgqueuer", here + "peer_pgqueuer", peer),
    ]
    # Brokers whose tidings channel exists in this checkout join with their peers.
    channels = Path(__file__).resolve().parents[3] / "src" / "tidings" / "channels"
    if (channels / "nats").is_dir():
        found += [
            System("nats", "raw nats-py", here + "raw_nats", raw),
            System("nats", "tidings", here + "tidings_app", tidings),
            System("nats", "FastStream", here + "peer_faststream", peer),
        ]
    if (channels / "kafka").is_dir():
        found += [
            System("kafka", "raw aiokafka", here + "raw_kafka", raw),
            System("kafka", "tidings", here + "tidings_app", tidings),
            System("kafka", "FastStream", here + "peer_faststream", peer),
        ]
    if (channels / "sqs").is_dir():
        found += [
            System("sqs", "raw aiobotocore", here + "raw_sqs", raw),
            System("sqs", "tidings", here + "tidings_app", tidings),
        ]
    return found


SYSTEMS: list[System] = _systems()
BY_KEY: dict[str, System] = {system.key: system for system in SYSTEMS}
