"""How an envelope travels in a JetStream message, and what the ack subject of a delivery says.

The envelope is the message's payload: the msgpack array `[headers, body]`. NATS headers are not
used: nats-py trims their values and parses them with the `email` package on every delivery, while
one msgpack decode keeps headers byte-exact and costs a fraction of that. A payload that is not such
an array (published by another tool) is delivered as a body without headers.
"""

from __future__ import annotations

from typing import Final

import msgspec

from tidings._message import Envelope

__all__ = ["decode", "delivery_fields", "encode"]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[dict[str, str], bytes]).decode

#: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`; newer
#: servers insert `<domain>.<account hash>` after `ACK` and may append a random token.
_V1_TOKENS: Final = 9


def encode(envelope: Envelope) -> bytes:
    return _encode((envelope.headers, envelope.body))


def decode(payload: bytes) -> Envelope:
    try:
        headers, body = _decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Envelope(payload, {})
    return Envelope(body, headers)


def delivery_fields(ack_subject: str) -> tuple[int, int]:
    """How often the message was delivered, and its stream sequence, from a delivery's ack subject."""
    tokens = ack_subject.split(".")
    if len(tokens) == _V1_TOKENS:
        return int(tokens[4]), int(tokens[5])
    return int(tokens[6]), int(tokens[7])
