from __future__ import annotations

import subprocess
import sys

import tidings


def test_the_public_names_are_sorted_and_all_importable() -> None:
    assert list(tidings.__all__) == sorted(tidings.__all__)
    for name in tidings.__all__:
        assert getattr(tidings, name) is not None


def test_importing_tidings_loads_no_broker_driver_and_no_database_library() -> None:
    code = (
        "import sys, tidings, tidings.testing\n"
        "drivers = ['aio_pika', 'aiormq', 'aiokafka', 'aiobotocore', 'redis', 'nats', 'sqlalchemy',"
        " 'asyncpg', 'aiomysql', 'aiosqlite', 'pydantic']\n"
        "print([d for d in drivers if d in sys.modules])\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert loaded.stdout.strip() == "[]"


def test_every_exception_derives_from_the_one_root() -> None:
    from tidings import exceptions

    for name in exceptions.__all__:
        assert issubclass(getattr(exceptions, name), exceptions.TidingsError)


def test_every_broker_channel_is_reachable_from_the_top_level_package() -> None:
    for name in (
        "SqlChannel",
        "RedisChannel",
        "RabbitMQChannel",
        "NatsChannel",
        "KafkaChannel",
        "SqsChannel",
    ):
        channel_class = getattr(tidings, name)
        assert issubclass(channel_class, tidings.Channel)
