"""How a message is stored in Redis: a short *member* that names it, and its *entry* in a hash.

A member is `count | priority "|" uid`:

- `count`, the deliveries so far, is a big-endian uint32 (4 bytes), so that a script can raise it
  in place;
- `priority` is the decimal string of the message's lane, read by a script that puts the message
  back in its lane;
- `uid` makes every member unique, so two identical envelopes never share a lease.

Lanes, the delayed set and the leases hold members, and the `bodies` hash maps each member to the
message's entry in a claim's reply, stored ready-made: the msgpack array `[count, receipt, headers,
body]`, the receipt being the member as a RESP bulk string. Scripts move only members, a few dozen
bytes each; a claim reads the entries and returns them as they are, and the ack deletes them. A
message delivered again (its lease ran out, or it was nacked) gets a new member with its count
raised, and its entry, rewritten for it, moves to that field: an ack, nack or extension from a
consumer whose lease ran out names the old member and finds nothing, so it changes nothing.

Batches sent go to their script *framed*: one msgpack array of raw strings per argument, which
Redis's `cmsgpack.unpack` splits in C. A claim replies with a msgpack array header followed by the
entries, so that the client decodes a whole batch in one call, and acks, nacks and extensions only
join receipts.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import msgspec

from tidings._message import Envelope
from tidings.channels.base import Delivery

__all__ = ["bulk", "decode_batch", "entry", "frame", "join_receipts", "new_member"]

#: The count of a member never delivered.
_NEVER_DELIVERED = b"\x00\x00\x00\x00"
#: fixarray of 4, a uint32 zero (the count), then the type byte of a bin8 (the receipt).
_FRESH_ENTRY_HEAD = b"\x94\xce" + _NEVER_DELIVERED + b"\xc4"

_encode = msgspec.msgpack.Encoder().encode
_decode_claimed = msgspec.msgpack.Decoder(list[tuple[int, bytes, dict[str, str], bytes]]).decode
#: A msgpack type byte and a 32-bit length: the head of an array32 (0xdd) or of a str32 (0xdb).
_head = struct.Struct(">BI").pack


def bulk(data: bytes | str) -> bytes:
    """`data` as a RESP bulk string: one argument of a command."""
    if isinstance(data, str):
        data = data.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def new_member(priority: str, uid: str) -> bytes:
    """The member of a message never delivered; `priority` is a decimal string."""
    return _NEVER_DELIVERED + f"{priority}|{uid}".encode()


def entry(member: bytes, envelope: Envelope) -> bytes:
    """The claim-reply entry of a message never delivered: `[0, receipt, headers, body]`."""
    receipt = bulk(member)
    # The tuple encodes as fixarray(2) + its fields: the fields alone follow the receipt.
    fields = _encode((envelope.headers, envelope.body))[1:]
    return _FRESH_ENTRY_HEAD + bytes((len(receipt),)) + receipt + fields


def decode_batch(batch: bytes) -> list[Delivery]:
    """Deliveries from a claim script's reply: a msgpack array of `[count, receipt, headers, body]`."""
    return [
        Delivery(Envelope(body, headers), receipt, count + 1)
        for count, receipt, headers, body in _decode_claimed(batch)
    ]


def join_receipts(deliveries: Sequence[Delivery]) -> bytes:
    """The deliveries' members as RESP bulk strings: arguments of one command, in a row."""
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
