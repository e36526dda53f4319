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

import msgspec
from aiobotocore.session import get_session

from tidings import headers as h
from tidings._clock import SystemClock
from tidings._message import Envelope
from tidings.channels.base import ChannelEnvironment
from tidings.channels.sqs import SqsChannel

BATCH = 100
SQS_BATCH = 10
CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
SERVER = Path(__file__).resolve().parents[1] / "tests" / "sqs_server"


def bodies(count: int) -> list[bytes]:
    return [msgspec.json.encode({"order_id": f"o-{n}", "total": n}) for n in range(count)]


def envelopes(count: int) -> list[Envelope]:
    now = repr(time.time())
    return [
        Envelope(
            body,
            {
                h.MESSAGE_ID: str(uuid.uuid4()),
                h.ENDPOINT: "handle_order",
                h.MESSAGE_NAME: "OrderPlaced",
                h.CONTENT_TYPE: "application/json",
                h.TIMESTAMP: now,
            },
        )
        for body in bodies(count)
    ]


class Timing:
    def __init__(self, send: float, drain: float, cpu: float) -> None:
        self.send = send
        self.drain = drain
        #: This process's CPU time for the whole loop: what the client side costs, whatever else
        #: the machine is doing.
        self.cpu = cpu

    @property
    def total(self) -> float:
        return self.send + self.drain


async def raw_loop(client: Any, payloads: list[tuple[str, str]], *, fill: bool) -> Timing:
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
    return Timing(sent - started, drained - sent, cpu)


async def channel_loop(endpoint_url: str, messages: list[Envelope]) -> Timing:
    channel = SqsChannel(f"bench-{uuid.uuid4().hex[:12]}", endpoint_url=endpoint_url, **CREDENTIALS)
    await channel.connect(ChannelEnvironment(app_name="bench", clock=SystemClock()))
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(messages), BATCH):
            await channel.send(messages[first : first + BATCH])
        sent = time.perf_counter()
        handled = 0
        while handled < len(messages):
            deliveries = await channel.receive(BATCH, timeout=1.0)
            for delivery in deliveries:
                handled += len(delivery.envelope.body) > 0  # the trivial handler
            await channel.ack(deliveries)
        drained, cpu = time.perf_counter(), time.process_time() - cpu
        assert await channel.depth() == 0
        await channel._call("delete_queue")
    finally:
        await channel.close()
    return Timing(sent - started, drained - sent, cpu)


def medians(timings: list[Timing]) -> tuple[float, float, float]:
    return (
        statistics.median(t.send for t in timings),
        statistics.median(t.drain for t in timings),
        statistics.median(t.total for t in timings),
    )


def row(name: str, count: int, timings: list[Timing], raw: list[list[Timing]] | None = None) -> str:
    send, drain, total = medians(timings)
    cpu = statistics.median(t.cpu for t in timings) / count * 1e6
    cells = [name, f"{count / send:,.0f}", f"{count / drain:,.0f}", f"{count / total:,.0f}", f"{cpu:.0f}"]
    if raw is None:
        cells += ["", "", ""]
    else:
        # Against the faster raw loop in each column.
        best = [min(medians(loop)[column] for loop in raw) for column in range(3)]
        cells += [f"{best[0] / send:.0%}", f"{best[1] / drain:.0%}", f"{best[2] / total:.0%}"]
    return "| " + " | ".join(cells) + " |"


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
    messages = envelopes(count)
    # The raw loops carry the same messages: the body, and the headers as one JSON attribute.
    payloads = [(m.body.decode(), msgspec.json.encode(m.headers).decode()) for m in messages]
    results: dict[str, list[Timing]] = {"parallel": [], "fill": [], "channel": []}
    try:
        async with get_session().create_client(
            "sqs", region_name="us-east-1", endpoint_url=endpoint_url, **CREDENTIALS
        ) as client:
            runs: dict[str, Callable[[], Awaitable[Timing]]] = {
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
