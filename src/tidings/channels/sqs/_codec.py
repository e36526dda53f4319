"""How an envelope is laid out as an SQS message.

- The body travels as the message body, unchanged, when it is UTF-8 text that SQS accepts (JSON
  payloads nearly always are), so that other SQS tools see the payload as it is. Anything else
  (binary data, control characters, characters beyond U+FFFF such as emoji, which some
  SQS-compatible servers refuse) travels base64-encoded, flagged by the `tidings.body-encoding`
  attribute; an empty body, which SQS refuses, is flagged as `empty`.
- All tidings headers travel together as one JSON object in the `tidings.headers` string attribute:
  SQS allows only 10 message attributes, and one attribute keeps any number of headers. Headers
  with characters beyond U+FFFF are written with JSON escapes.

A message without these attributes (sent by another SQS producer) is read as a body with no headers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from typing import Any, Final

import msgspec

from tidings import headers as h
from tidings._message import Envelope
from tidings._serialization import PACKED_HEADERS, pack_headers, unpack_headers

__all__ = [
    "ATTRIBUTE_NAMES",
    "decode",
    "deduplication_id",
    "encode",
    "message_group_id",
]

BODY_ENCODING: Final = "tidings.body-encoding"
#: The message attributes a receive asks for.
ATTRIBUTE_NAMES: Final = [PACKED_HEADERS, BODY_ENCODING]

#: Characters SQS refuses in a message body or attribute (it takes XML 1.0 characters only), and
#: those outside the Basic Multilingual Plane, which AWS takes but some SQS-compatible servers refuse.
_NOT_SQS_TEXT: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\U00010000-\U0010ffff]")
#: The same in UTF-8 JSON, where control characters are escaped already.
_NOT_SQS_JSON: Final = re.compile(rb"[\xf0-\xf4]|\xef\xbf[\xbe\xbf]")
#: What SQS accepts as a message group or deduplication id.
_SQS_ID: Final = re.compile(r"[!-~]{1,128}")


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


_BASE64: Final = _string("base64")
_EMPTY: Final = _string("empty")


def encode(envelope: Envelope) -> tuple[str, dict[str, Any], int]:
    """The message body, message attributes and their size in bytes, as SQS counts them."""
    body = envelope.body
    attributes: dict[str, Any] = {}
    try:
        text = body.decode()
    except UnicodeDecodeError:
        text = ""
    if text and _NOT_SQS_TEXT.search(text) is None:
        size = len(body)
    elif body:
        text = base64.b64encode(body).decode("ascii")
        attributes[BODY_ENCODING] = _BASE64
        size = len(text) + 40
    else:
        text = "-"
        attributes[BODY_ENCODING] = _EMPTY
        size = 40
    if envelope.headers:
        encoded = pack_headers(envelope.headers)
        if _NOT_SQS_JSON.search(encoded) is not None:
            encoded = json.dumps(envelope.headers, ensure_ascii=True).encode()
        attributes[PACKED_HEADERS] = _string(encoded.decode())
        size += len(encoded) + 30
    return text, attributes, size


def decode(message: dict[str, Any]) -> Envelope:
    """The envelope carried by a received SQS message."""
    text: str = message["Body"]
    attributes = message.get("MessageAttributes")
    if not attributes:
        return Envelope(text.encode(), {})
    headers: dict[str, str] = {}
    encoded_headers = attributes.get(PACKED_HEADERS)
    if encoded_headers is not None:
        try:
            headers = unpack_headers(encoded_headers["StringValue"])
        except (msgspec.DecodeError, KeyError):
            headers = {}  # not ours after all: the consumer dead-letters it for its missing endpoint
    encoding = attributes.get(BODY_ENCODING)
    if encoding is None:
        return Envelope(text.encode(), headers)
    if encoding.get("StringValue") == "empty":
        return Envelope(b"", headers)
    return Envelope(base64.b64decode(text), headers)


def _sqs_id(value: str) -> str:
    if _SQS_ID.fullmatch(value):
        return value
    return hashlib.sha256(value.encode()).hexdigest()


def message_group_id(envelope: Envelope, group_header: str) -> str:
    """The FIFO message group: the ordering header if set, else the endpoint (one order per handler)."""
    headers = envelope.headers
    return _sqs_id(headers.get(group_header) or headers.get(h.ENDPOINT) or "tidings")


def deduplication_id(envelope: Envelope) -> str:
    """The FIFO deduplication id: one per copy (message id and endpoint) and per attempt.

    The attempt and the replay marker are part of it, so that a delayed retry or a replay sent
    within SQS's five-minute deduplication window is not taken for a duplicate and dropped.
    """
    headers = envelope.headers
    parts = [
        headers.get(h.MESSAGE_ID) or uuid.uuid4().hex,
        headers.get(h.ENDPOINT, ""),
        headers.get(h.ATTEMPT, "1"),
    ]
    replayed = headers.get(h.REPLAYED)
    if replayed is not None:
        parts.append(replayed)
    return _sqs_id(":".join(parts))
