"""How a message is stored in Redis: one msgpack *element* per message.

An element is the msgpack array `[count, priority, uid, headers, body]`:

- `count` (deliveries so far) is always a 32-bit unsigned int (`0xce` + 4 bytes) at bytes 2-6,
  so that a Lua script can raise it in place;
- `priority` is the decimal string of the lane (a msgpack fixstr at byte 7), readable by scripts;
- `uid` makes every element unique, so two identical envelopes never share a lease;
- `headers` and `body` are the envelope, unchanged.

The element is also the delivery's receipt: acking removes exactly that string from the leases.
Batches of elements travel to the SEND script *framed*: as one msgpack array of raw strings (str32
headers around arbitrary bytes), which Redis's `cmsgpack.unpack` splits in C. A delivery's receipt
is its element as a RESP bulk string, ready to be an argument of a command, so that acks, nacks and
extensions only join receipts.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import msgspec

from tidings._message import Envelope
from tidings.channels.base import Delivery

__all__ = ["decode_batch", "encode_element", "frame", "join_receipts"]

#: fixarray of 5, then the count of earlier deliveries as a fixed-width uint32 zero.
_FRESH_HEAD = b"\x95\xce\x00\x00\x00\x00"

_encode = msgspec.msgpack.Encoder().encode
_decode_receipts = msgspec.msgpack.Decoder(list[msgspec.Raw]).decode
_decode_elements = msgspec.msgpack.Decoder(list[tuple[int, str, str, dict[str, str], bytes]]).decode
#: A msgpack type byte and a 32-bit length: the head of an array32 (0xdd) or of a str32 (0xdb).
_head = struct.Struct(">BI").pack


def encode_element(priority: str, uid: str, envelope: Envelope) -> bytes:
    """A never-delivered element; `priority` is a decimal string of at most 31 characters."""
    # The tuple encodes as fixarray(4) + fields: drop its header and put ours in front.
    return _FRESH_HEAD + _encode((priority, uid, envelope.headers, envelope.body))[1:]


def decode_batch(batch: bytes) -> list[Delivery]:
    """Deliveries from a claim script's reply: a msgpack array of elements.

    Decoded twice in C, once whole and once element by element as raw slices (the receipts), which
    is cheaper than decoding each slice on its own.
    """
    return [
        Delivery(Envelope(body, headers), b"$%d\r\n%b\r\n" % (len(receipt), receipt), count + 1)
        for receipt, (count, _, _, headers, body) in zip(
            _decode_receipts(batch), _decode_elements(batch), strict=True
        )
    ]


def join_receipts(deliveries: Sequence[Delivery]) -> bytes:
    """The deliveries' elements as RESP bulk strings: arguments of one command, in a row."""
    return b"".join([delivery.receipt for delivery in deliveries])


def frame(values: Sequence[bytes | str]) -> bytes:
    """One argument holding many: a msgpack array32 of str32 values (bytes need not be UTF-8)."""
    parts = [_head(0xDD, len(values))]
    append = parts.append
    for value in values:
        data = value.encode() if isinstance(value, str) else value
        append(_head(0xDB, len(data)))
        append(data)
    return b"".join(parts)
