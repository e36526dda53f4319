"""SqsChannel against the raw aiobotocore loop it stands on, measured in the same run.

    .venv/bin/python bench/sqs_channel.py [--messages 5000] [--rounds 3] [--endpoint-url URL]

Without --endpoint-url it starts fauxqs on loopback (`npm ci --prefix tests/sqs_server` first).
Each round sends N small messages 100 at a time and drains them 100 at a time with a trivial
handler, first with raw aiobotocore, then with SqsChannel, each on a fresh queue:

- *raw*: the same messages (body, and the headers as one JSON string attribute, as the channel
  carries them); 100 go out as 10 `SendMessageBatch` calls in parallel. The drain receives 100
  at a time, either as 10 `ReceiveMessage(10)` long polls in parallel, or as one long poll
  followed, when it comes back full, by 9 more calls in parallel (what the channel does); then
  one `DeleteMessageBatch` per reply, in parallel.
- *channel*: `send(100)`; `receive(100, timeout=1)` then `ack` of what came, which is the same
  calls underneath plus the envelope encoding, headers, delivery counts and due-time checks.

The table shows medians over the rounds (rates in messages per second, and this process's CPU time
per message, which other load on the machine barely moves) and the channel's rates over the faster
raw loop's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _harness as harness
import msgspec
from aiobotocore.session import get_session

from tidings._message import Envelope
from tidings.channels.sqs import SqsChannel

BATCH = 100
SQS_BATCH = 10
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
SERVER = Path(__file__).resolve().parents[1] / "tests" / "sqs_server"


async def raw_loop(client: Any, payloads: list[tuple[str, str]], *, fill: bool) -> harness.Timing:
    url = (await client.create_queue(QueueName=f"bench-raw-{uuid.uuid4().hex[:12]}"))["QueueUrl"]
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(payloads), BATCH):
            batch = payloads[first : first + BATCH]
            await asyncio.gather(
                *(
                    client.send_message_batch(
                        QueueUrl=url,
                        Entries=[
                            {
                                "Id": str(n),
                                "MessageBody": body,
                                "MessageAttributes": {
                                    "headers": {"DataType": "String", "StringValue": headers}
                                },
                            }
                            for n, (body, headers) in enumerate(batch[part : part + SQS_BATCH])
                        ],
                    )
                    for part in range(0, len(batch), SQS_BATCH)
                )
            )
        sent = time.perf_counter()
        handled = 0
        while handled < len(payloads):
            if fill:
                # One long poll; when it comes back full, the other nine calls in parallel.
                first = await client.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=SQS_BATCH,
                    WaitTimeSeconds=1,
                    MessageAttributeNames=["All"],
                )
                replies = [first]
                if len(first.get("Messages") or ()) == SQS_BATCH:
                    replies += await asyncio.gather(
                        *(
                            client.receive_message(
                                QueueUrl=url,
                                MaxNumberOfMessages=SQS_BATCH,
                                WaitTimeSeconds=0,
                                MessageAttributeNames=["All"],
                            )
                            for _ in range(BATCH // SQS_BATCH - 1)
                        )
                    )
            else:
                replies = await asyncio.gather(
                    *(
                        client.receive_message(
                            QueueUrl=url,
                            MaxNumberOfMessages=SQS_BATCH,
                            WaitTimeSeconds=1,
                            MessageAttributeNames=["All"],
                        )
                        for _ in range(BATCH // SQS_BATCH)
                    )
                )
            deletes = []
            for reply in replies:
                messages = reply.get("Messages") or []
                for message in messages:
                    handled += len(message["Body"]) > 0  # the trivial handler
                if messages:
                    entries = [
                        {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
                    ]
                    deletes.append(client.delete_message_batch(QueueUrl=url, Entries=entries))
            await asyncio.gather(*deletes)
        drained, cpu = time.perf_counter(), time.process_time() - cpu
    finally:
        await client.delete_queue(QueueUrl=url)
    return harness.Timing(sent - started, drained - sent, cpu)


async def channel_loop(endpoint_url: str, messages: list[Envelope]) -> harness.Timing:
    channel = SqsChannel(f"bench-{uuid.uuid4().hex[:12]}", endpoint_url=endpoint_url, **CREDENTIALS)
    await channel.connect(harness.channel_environment())
    try:
        timing = await harness.send_and_drain(channel, messages, send_batch=BATCH, receive_batch=BATCH)
        await channel._call("delete_queue")
    finally:
        await channel.close()
    return timing


def row(
    name: str, count: int, timings: list[harness.Timing], raw: list[list[harness.Timing]] | None = None
) -> str:
    cpu = statistics.median(t.cpu for t in timings) / count * 1e6
    ratios = ["", "", ""] if raw is None else harness.against_fastest(timings, raw, columns=(0, 1, 2))
    return harness.table_row([name, *harness.rate_cells(count, timings), f"{cpu:.0f}", *ratios])


def start_fauxqs() -> tuple[str, subprocess.Popen[bytes]]:
    if not (SERVER / "node_modules" / "fauxqs").exists():
        raise SystemExit(f"fauxqs is not installed: run `npm ci --prefix {SERVER}` first")
    server = subprocess.Popen(
        ["node", str(SERVER / "serve.mjs")], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert server.stdout is not None
    port = json.loads(server.stdout.readline())["port"]
    return f"http://127.0.0.1:{port}", server


async def main(count: int, rounds: int, endpoint_url: str | None) -> None:
    server = None
    if endpoint_url is None:
        endpoint_url, server = start_fauxqs()
    messages = harness.order_envelopes(count)
    # The raw loops carry the same messages: the body, and the headers as one JSON attribute.
    payloads = [(m.body.decode(), msgspec.json.encode(m.headers).decode()) for m in messages]
    results: dict[str, list[harness.Timing]] = {"parallel": [], "fill": [], "channel": []}
    try:
        async with get_session().create_client(
            "sqs", region_name="us-east-1", endpoint_url=endpoint_url, **CREDENTIALS
        ) as client:
            runs: dict[str, Callable[[], Awaitable[harness.Timing]]] = {
                "parallel": lambda: raw_loop(client, payloads, fill=False),
                "fill": lambda: raw_loop(client, payloads, fill=True),
                "channel": lambda: channel_loop(endpoint_url, messages),
            }
            await channel_loop(endpoint_url, messages[:500])  # warm up: service model loaded, pools open
            await raw_loop(client, payloads[:500], fill=True)
            for _ in range(rounds):
                for name, run in runs.items():
                    results[name].append(await run())
    finally:
        if server is not None:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(10)

    print(f"{count:,} messages, batches of {BATCH}, median of {rounds} rounds (msgs/s), fauxqs on loopback\n")
    print(
        "| loop | send | drain | end to end | client CPU µs/msg | send vs raw | drain vs raw | e2e vs raw |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(row("raw: 10 parallel ReceiveMessage(10) long polls", count, results["parallel"]))
    print(row("raw: ReceiveMessage(10), when full 9 more in parallel", count, results["fill"]))
    raw = [results["parallel"], results["fill"]]
    print(row("SqsChannel: send(100); receive(100) + ack", count, results["channel"], raw))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--endpoint-url", default=None)
    options = parser.parse_args()
    asyncio.run(main(options.messages, options.rounds, options.endpoint_url))
