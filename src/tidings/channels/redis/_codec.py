"""How an envelope is stored in Redis: one msgpack value holding the headers and the raw body."""

from __future__ import annotations

import msgspec

from tidings._message import Envelope

__all__ = ["decode_envelope", "encode_envelope"]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[dict[str, str], bytes]).decode


def encode_envelope(envelope: Envelope) -> bytes:
    """Headers and body in one value, so that a message is one hash field."""
    return _encode((envelope.headers, envelope.body))


def decode_envelope(value: bytes) -> Envelope:
    headers, body = _decode(value)
    return Envelope(body, headers)
