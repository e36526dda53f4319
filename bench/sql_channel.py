"""SqlChannel on PostgreSQL against the raw asyncpg loops it stands on, measured in the same run.

    .venv/bin/python bench/sql_channel.py [--messages 20000] [--rounds 3] [--url postgresql://...]

Each round runs raw and SqlChannel on the same server and payloads (a JSON body and five headers),
alternating in slices of 2,000 messages so that both see the same machine load:

- *enqueue*: raw `executemany` of an INSERT, one call per batch of 100 rows (each call is atomic), into a
  plain queue table (id, queue, headers, body; index on (queue, id)); then `SqlChannel.send` in batches
  of 100. For reference the table also shows one `executemany` of all rows in a single call.
- *drain*: raw loop of `BEGIN; SELECT ... ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED; DELETE ... WHERE
  id = ANY(...); COMMIT`, decoding each row's headers as the channel does; then `SqlChannel.receive(100)`
  + `ack` until every message came back; also with `durable_acks=True`, where every ack waits for the
  WAL flush (by default claims and acks commit asynchronously, see SqlChannel).

Then the latency of single messages sent at 200 msg/s, received by a consumer that only NOTIFY wakes.

Tables are vacuumed before each phase (this server runs with autovacuum off). The table shows medians;
the ratio is SqlChannel's rate over the raw per-batch rate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import _harness as harness
import asyncpg
import msgspec

from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.sql import SqlChannel
from tidings.sql import Database

BATCH = 100
RAW_TABLE = "bench_raw_queue"

decode_headers = msgspec.json.Decoder(dict[str, str]).decode


async def vacuum(connection: asyncpg.Connection, *tables: str) -> None:
    for table in tables:
        await connection.execute(f"VACUUM (ANALYZE) {table}")


SLICE = 2_000


async def raw_enqueue(
    connection: asyncpg.Connection, queue: str, rows: list[tuple[str, str, bytes]], batch: int
) -> float:
    """Seconds to insert `rows` with one executemany per `batch` rows (each call is atomic)."""
    sql = f"INSERT INTO {RAW_TABLE} (queue, headers, body) VALUES ($1, $2, $3)"
    started = time.perf_counter()
    for first in range(0, len(rows), batch):
        await connection.executemany(sql, rows[first : first + batch])
    return time.perf_counter() - started


async def raw_drain(connection: asyncpg.Connection, queue: str, count: int) -> float:
    """Seconds to claim and delete `count` rows, 100 per transaction, decoding their headers."""
    claim = await connection.prepare(
        f"SELECT id, headers, body FROM {RAW_TABLE} WHERE queue = $1 "
        f"ORDER BY id LIMIT {BATCH} FOR UPDATE SKIP LOCKED"
    )
    delete = await connection.prepare(f"DELETE FROM {RAW_TABLE} WHERE id = ANY($1::bigint[])")
    drained = 0
    started = time.perf_counter()
    while drained < count:
        async with connection.transaction():
            rows = await claim.fetch(queue)
            handled = [(decode_headers(row[1]), row[2]) for row in rows]
            await delete.fetch([row[0] for row in rows])
        if not handled:
            raise RuntimeError("the raw queue ran dry early")
        drained += len(handled)
    return time.perf_counter() - started


async def channel_drain(channel: SqlChannel, count: int) -> float:
    """Seconds to receive(100) and ack until `count` messages came back."""
    drained = 0
    started = time.perf_counter()
    while drained < count:
        deliveries = await channel.receive(BATCH, timeout=1.0)
        if not deliveries:
            raise RuntimeError("the channel ran dry early")
        await channel.ack(deliveries)
        drained += len(deliveries)
    return time.perf_counter() - started


async def one_round(
    connection: asyncpg.Connection, channel: SqlChannel, durable: SqlChannel, count: int
) -> dict[str, float]:
    """Rates (msg/s) of one round. Raw and channel alternate in slices of 2,000 messages, so that
    both see the same machine load."""
    messages = harness.order_envelopes(count)
    queue = f"raw-{uuid.uuid4().hex[:8]}"
    rows = [(queue, msgspec.json.encode(m.headers).decode(), m.body) for m in messages]
    labels = ("raw enqueue", "channel enqueue", "raw drain", "channel drain", "durable-acks drain")
    seconds = dict.fromkeys(labels, 0.0)

    await vacuum(connection, RAW_TABLE, "tidings_messages")
    for first in range(0, count, SLICE):
        seconds["raw enqueue"] += await raw_enqueue(connection, queue, rows[first : first + SLICE], BATCH)
        seconds["channel enqueue"] += await harness.send_in_batches(
            channel, messages[first : first + SLICE], BATCH
        )
        await harness.send_in_batches(durable, messages[first : first + SLICE], BATCH)
    await vacuum(connection, RAW_TABLE, "tidings_messages")
    for first in range(0, count, SLICE):
        size = min(SLICE, count - first)
        seconds["raw drain"] += await raw_drain(connection, queue, size)
        seconds["channel drain"] += await channel_drain(channel, size)
        seconds["durable-acks drain"] += await channel_drain(durable, size)

    await vacuum(connection, RAW_TABLE)
    one_call = await raw_enqueue(connection, queue, rows, count)
    await connection.execute(f"DELETE FROM {RAW_TABLE}")
    rates = {label: count / spent for label, spent in seconds.items()}
    rates["raw one-call"] = count / one_call
    return rates


async def latency(url: str, rate: float, seconds: float) -> list[float]:
    """Milliseconds from send to receive, one message at a time at `rate` per second.

    The consumer has its own Database (engine and pool), as a worker process would: nothing in this
    process wakes it, only PostgreSQL's NOTIFY. Its poll interval is 30 s, so polling cannot help.
    """
    name = f"bench-latency-{uuid.uuid4().hex[:8]}"
    producer_db, consumer_db = Database(url), Database(url)
    environment = harness.channel_environment()
    producer = SqlChannel(name, database=producer_db)
    consumer = SqlChannel(name, database=consumer_db, poll_interval=30.0)
    await producer.connect(environment)
    await consumer.connect(environment)
    delays: list[float] = []
    total = int(rate * seconds)

    async def consume() -> None:
        while len(delays) < total:
            deliveries = await consumer.receive(100, timeout=1.0)
            arrived = time.perf_counter()
            delays.extend((arrived - float(d.envelope.body)) * 1000 for d in deliveries)
            await consumer.ack(deliveries)

    try:
        consuming = asyncio.ensure_future(consume())
        await asyncio.sleep(0.5)
        async for n in harness.paced(range(total), rate):
            await producer.send([Envelope(repr(time.perf_counter()).encode(), {h.MESSAGE_ID: str(n)})])
        await asyncio.wait_for(consuming, timeout=30)
    finally:
        await producer.purge()
        for channel in (producer, consumer):
            await channel.close()
        await producer_db.close()
        await consumer_db.close()
    return delays


async def main(url: str, count: int, rounds: int) -> None:
    database = Database(url)
    await database.create_schema()
    raw_url = database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(raw_url)
    await connection.execute(
        f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} "
        "(id bigserial PRIMARY KEY, queue text NOT NULL, headers text NOT NULL, body bytea NOT NULL)"
    )
    await connection.execute(f"CREATE INDEX IF NOT EXISTS {RAW_TABLE}_claim ON {RAW_TABLE} (queue, id)")
    environment = harness.channel_environment()
    channel = SqlChannel(f"bench-{uuid.uuid4().hex[:8]}", database=database)
    durable = SqlChannel(f"bench-{uuid.uuid4().hex[:8]}", database=database, durable_acks=True)
    await channel.connect(environment)
    await durable.connect(environment)
    results: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            for label, rate in (await one_round(connection, channel, durable, count)).items():
                results.setdefault(label, []).append(rate)
    finally:
        for opened in (channel, durable):
            await opened.purge()
            await opened.close()
        await database.close()
        await connection.execute(f"DROP TABLE IF EXISTS {RAW_TABLE}")
        await connection.close()

    delays = await latency(url, rate=200, seconds=5)
    report(results, count, rounds)
    quantiles = statistics.quantiles(delays, n=100)
    print(
        f"\nLatency of single messages at 200 msg/s for 5 s, consumer in another engine woken by "
        f"LISTEN/NOTIFY: p50 {statistics.median(delays):.1f} ms, p90 {quantiles[89]:.1f} ms, "
        f"p99 {quantiles[98]:.1f} ms, max {max(delays):.1f} ms ({len(delays)} messages)"
    )


def report(results: dict[str, list[float]], count: int, rounds: int) -> None:
    median = {label: statistics.median(values) for label, values in results.items()}
    print(
        f"SqlChannel vs raw asyncpg on PostgreSQL: {count:,} messages, batches of {BATCH}, "
        f"median of {rounds} rounds\n"
    )
    print("| workload | raw asyncpg (msg/s) | SqlChannel (msg/s) | ratio | ratio per round |")
    print("|---|---:|---:|---:|---|")
    for workload in ("enqueue", "drain"):
        raw, ours = results[f"raw {workload}"], results[f"channel {workload}"]
        per_round = ", ".join(f"{o / r:.0%}" for r, o in zip(raw, ours, strict=True))
        print(
            f"| {workload} | {median[f'raw {workload}']:,.0f} | {median[f'channel {workload}']:,.0f} "
            f"| {median[f'channel {workload}'] / median[f'raw {workload}']:.0%} | {per_round} |"
        )
    raw_drain_rate = median["raw drain"]
    print(
        f"\nWith `durable_acks=True` (every ack waits for the WAL flush): drain "
        f"{median['durable-acks drain']:,.0f} msg/s, {median['durable-acks drain'] / raw_drain_rate:.0%} "
        "of raw, per round "
        + ", ".join(
            f"{ours / raw:.0%}"
            for raw, ours in zip(results["raw drain"], results["durable-acks drain"], strict=True)
        )
    )
    print(
        f"\nFor reference, one executemany of all {count:,} rows in a single call (one transaction): "
        f"{median['raw one-call']:,.0f} msg/s"
    )
    print(
        "\nEvery round (msg/s): "
        + "; ".join(
            f"{label}: {', '.join(f'{value:,.0f}' for value in values)}" for label, values in results.items()
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.url, arguments.messages, arguments.rounds))
