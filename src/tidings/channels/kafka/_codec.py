"""Envelopes as Kafka records: headers as (name, UTF-8 bytes) pairs, the ordering key, private headers.

The channel adds a few headers of its own (prefix `tidings-kafka.`) to copies it produces; they are
removed before a delivery is handed out, so handlers see exactly the headers that were sent.
"""

from __future__ import annotations

from typing import Final

from tidings import headers as h

__all__ = [
    "DELIVERIES",
    "DUE",
    "HOP_UNTIL",
    "Headers",
    "decode_headers",
    "encode_headers",
]

#: How often the message was handed out before this copy was produced (absent: never).
DELIVERIES: Final = "tidings-kafka.deliveries"
#: On a record in a delay topic: when the message is due, in seconds since the epoch.
DUE: Final = "tidings-kafka.due"
#: On a record in a delay topic: when it leaves that topic (the end of its hop).
HOP_UNTIL: Final = "tidings-kafka.hop-until"

#: aiokafka's header format.
Headers = list[tuple[str, bytes]]

_DELIVER_AT: Final = h.DELIVER_AT


def encode_headers(headers: dict[str, str]) -> Headers:
    return [(name, value.encode()) for name, value in headers.items()]


def decode_headers(raw: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]]) -> dict[str, str]:
    # Headers from other producers may hold any bytes; they must not stop the consumer.
    try:
        return {name: value.decode() for name, value in raw}
    except (UnicodeDecodeError, AttributeError):
        return {name: (value or b"").decode(errors="replace") for name, value in raw}
