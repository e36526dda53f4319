"""How envelopes are laid out as SQS messages; no server needed."""

from __future__ import annotations

import pytest

pytest.importorskip("msgspec")

from tidings import headers as h
from tidings._message import Envelope
from tidings.channels.sqs._codec import decode, deduplication_id, encode, message_group_id


def received(envelope: Envelope) -> dict[str, object]:
    body, attributes, _ = encode(envelope)
    return {"Body": body, "MessageAttributes": attributes}


def test_a_json_body_travels_as_it_is_with_the_headers_in_one_attribute() -> None:
    body, attributes, size = encode(Envelope(b'{"a": 1}', {"x": "1", "y": "2"}))

    assert body == '{"a": 1}'
    assert list(attributes) == ["tidings.headers"]
    assert size >= len(body) + len('{"x":"1","y":"2"}')


def test_a_binary_body_travels_base64_encoded_and_comes_back_unchanged() -> None:
    envelope = Envelope(b"\x00\x01\xff", {"x": "1"})

    assert decode(received(envelope)).body == b"\x00\x01\xff"
    assert encode(envelope)[1]["tidings.body-encoding"]["StringValue"] == "base64"


def test_an_envelope_without_headers_sends_no_headers_attribute() -> None:
    body, attributes, _ = encode(Envelope(b"plain", {}))

    assert (body, attributes) == ("plain", {})


def test_copies_for_different_endpoints_attempts_or_replays_get_different_deduplication_ids() -> None:
    base = {h.MESSAGE_ID: "0190-abc", h.ENDPOINT: "ship"}
    ids = {
        deduplication_id(Envelope(b"", base)),
        deduplication_id(Envelope(b"", {**base, h.ENDPOINT: "bill"})),
        deduplication_id(Envelope(b"", {**base, h.ATTEMPT: "2"})),
        deduplication_id(Envelope(b"", {**base, h.REPLAYED: "1767225600.0"})),
    }

    assert len(ids) == 4
    assert deduplication_id(Envelope(b"x", base)) == deduplication_id(Envelope(b"y", base))


def test_group_and_deduplication_ids_that_sqs_would_refuse_are_hashed() -> None:
    envelope = Envelope(b"", {h.MESSAGE_ID: "m" * 200, "tidings.ordering-key": "t\u00e9nant one"})

    group = message_group_id(envelope, "tidings.ordering-key")
    dedup = deduplication_id(envelope)

    assert len(group) == len(dedup) == 64
    assert group.isalnum()
    assert dedup.isalnum()


def test_the_group_is_the_ordering_key_else_the_endpoint() -> None:
    assert message_group_id(Envelope(b"", {h.ENDPOINT: "ship", "key": "order-7"}), "key") == "order-7"
    assert message_group_id(Envelope(b"", {h.ENDPOINT: "ship"}), "key") == "ship"
