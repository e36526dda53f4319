"""Tables, the RESULTS.md section and the drain chart, from the rounds of one run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.suite.runner import Round, median
from bench.suite.systems import System

HEADING = "## Peers (make bench)"
TIMES = "\u00d7"  # the multiplication sign of ratios
NONE = "\u2013"  # an en dash where there is no figure
BROKER_TITLES = {
    "rabbitmq": "RabbitMQ",
    "redis": "Redis",
    "postgres": "PostgreSQL",
    "nats": "NATS JetStream",
    "kafka": "Kafka (Tansu)",
    "sqs": "SQS (fauxqs)",
}
METRICS = ("enqueue", "drain", "p50", "p99", "rss")
HIGHER_IS_BETTER = {"enqueue": True, "drain": True, "p50": False, "p99": False, "rss": False}


@dataclass
class Row:
    system: System
    values: dict[str, float | None]  # medians over the rounds
    rounds: list[Round]

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.rounds if r.error]

    @property
    def partial(self) -> list[str]:
        return [r.partial for r in self.rounds if r.partial]


def rows_of(systems: Sequence[System], rounds: Sequence[Round]) -> list[Row]:
    rows = []
    for system in systems:
        own = [r for r in rounds if r.key == system.key]
        if own:
            values = {metric: median(getattr(r, metric) for r in own) for metric in METRICS}
            rows.append(Row(system, values, own))
    return rows


def best(rows: Sequence[Row], role: str, metric: str) -> float | None:
    present = [r.values[metric] for r in rows if r.system.role == role and r.values[metric] is not None]
    if not present:
        return None
    return max(present) if HIGHER_IS_BETTER[metric] else min(present)  # type: ignore[type-var]


def ratio(value: float | None, reference: float | None, metric: str) -> str:
    """`value ÷ reference`, written so that > 1 means better for rates and worse for the others."""
    if value is None or not reference:
        return NONE
    quotient = value / reference
    return f"{quotient:.2f}{TIMES}" if quotient >= 0.1 else f"{quotient:.3f}{TIMES}"


def _number(value: float | None, digits: int = 0, missing: str = "failed") -> str:
    if value is None:
        return missing
    return f"{value:,.{digits}f}"


def broker_table(rows: Sequence[Row]) -> list[str]:
    raw_drain = best(rows, "raw", "drain")
    peer_drain = best(rows, "peer", "drain")
    lines = [
        "| system | enqueue msg/s | drain msg/s | p50 ms | p99 ms | peak RSS MiB "
        "| drain ÷ raw | drain ÷ best peer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        v = row.values
        name = f"**{row.system.label}**" if row.system.role == "tidings" else row.system.label
        mark, missing = ("\u2020", NONE) if row.partial else ("", "failed")
        lines.append(
            f"| {name} | {_number(v['enqueue'])} | {_number(v['drain'])}{mark} "
            f"| {_number(v['p50'], 1, missing)} | {_number(v['p99'], 1, missing)} | {_number(v['rss'])} "
            f"| {ratio(v['drain'], raw_drain, 'drain')} | {ratio(v['drain'], peer_drain, 'drain')} |"
        )
    for row in rows:
        if row.partial:
            lines += [
                "",
                f"\u2020 {row.system.label}: the drain hit the time limit ({'; '.join(row.partial)}); the "
                "rate is over the messages handled by then, and with a backlog left there was no latency "
                "phase.",
            ]
    return lines


def tidings_summary(rows: Sequence[Row]) -> str:
    """One line: the default tidings row against the best peer, metric by metric."""
    ours = next((r for r in rows if r.system.role == "tidings"), None)
    if ours is None or not any(r.system.role == "peer" for r in rows):
        return ""
    parts = []
    for metric, title in (
        ("enqueue", "enqueue"),
        ("drain", "drain"),
        ("p50", "p50"),
        ("p99", "p99"),
        ("rss", "peak RSS"),
    ):
        reference = best(rows, "peer", metric)
        value = ours.values[metric]
        if value is None or reference is None:
            parts.append(f"{title} {NONE}")
            continue
        good = value >= reference if HIGHER_IS_BETTER[metric] else value <= reference
        parts.append(f"{title} {value / reference:.2f}{TIMES} {'✔' if good else '✘'}")
    return "tidings ÷ best peer (✔ = at least as good): " + ", ".join(parts) + "."


def every_round_table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| broker | system | enqueue msg/s | drain msg/s | p50 ms | p99 ms | peak RSS MiB | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            " / ".join(
                _number(
                    getattr(r, metric), 1 if metric in ("p50", "p99") else 0, NONE if r.partial else "failed"
                )
                for r in row.rounds
            )
            for metric in METRICS
        ]
        seconds = " / ".join(f"{r.seconds:.0f}" for r in row.rounds)
        lines.append(f"| {row.system.broker} | {row.system.label} | {' | '.join(cells)} | {seconds} |")
    return lines


def chart(rows: Sequence[Row], path: Path, subtitle: str) -> None:
    """Grouped bars of the median drain rate, one group per broker, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    brokers = [b for b in BROKER_TITLES if any(r.system.broker == b for r in rows)]
    widest = max(sum(1 for r in rows if r.system.broker == b) for b in brokers)
    colours = {"raw": "#9e9e9e", "tidings": "#d62728", "variant": "#f4a3a3"}
    peer_colours = {
        "Celery": "#1f77b4",
        "Dramatiq": "#2ca02c",
        "FastStream": "#9467bd",
        "Taskiq": "#ff7f0e",
        "procrastinate": "#17becf",
        "pgqueuer": "#8c564b",
    }
    figure, axes = plt.subplots(figsize=(min(16.0, max(8.0, 1.0 + 0.45 * widest * len(brokers))), 5.5))
    width = 0.85 / widest
    for group, broker in enumerate(brokers):
        members = [r for r in rows if r.system.broker == broker]
        for slot, row in enumerate(members):
            drain = row.values["drain"]
            x = group + (slot - (len(members) - 1) / 2) * width
            colour = peer_colours.get(row.system.label, colours.get(row.system.role, "#444444"))
            axes.bar(x, drain or 0, width * 0.92, color=colour, edgecolor="black", linewidth=0.4)
            label = f"{row.system.label}\n{drain:,.0f}" if drain else f"{row.system.label}\nfailed"
            axes.text(x, (drain or 1) * 1.08, label, ha="center", va="bottom", fontsize=6.5, rotation=90)
    axes.set_yscale("log")
    axes.set_xticks(range(len(brokers)), [BROKER_TITLES[b] for b in brokers])
    axes.set_ylabel("drain rate, messages per second (log scale)")
    top = max((r.values["drain"] or 1) for r in rows)
    axes.set_ylim(10, top * 12)
    axes.set_title("Draining already-enqueued messages: raw driver (grey), tidings (red), peers\n" + subtitle)
    axes.grid(axis="y", which="both", alpha=0.25)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def replace_section(path: Path, section: str) -> None:
    """Put `section` (starting with HEADING) into `path`, keeping every other section as it was."""
    if not path.exists():
        path.write_text("# Benchmark results\n\n" + section)
        return
    text = path.read_text()
    start = text.find(HEADING)
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    following = re.compile(r"^## ", re.MULTILINE).search(text, start + len(HEADING))
    end = following.start() if following else len(text)
    path.write_text(text[:start] + section + ("\n" + text[end:] if following else ""))
