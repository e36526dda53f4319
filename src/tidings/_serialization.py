"""JSON on the wire, decoded into the type the receiving handler declares.

No class path travels with a message: the receiving side decides what type the body becomes. Codecs
are built once per endpoint at start-up, so the hot path does no type inspection.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = [
    "JSON_CONTENT_TYPE",
    "PACKED_HEADERS",
    "Decoder",
    "decoder_for",
    "describe_decode_error",
    "encode",
    "pack_headers",
    "union_members",
    "unpack_headers",
]

JSON_CONTENT_TYPE = "application/json"

#: Turns a body into the handler's message; the second argument is the message name header.
Decoder = Callable[[bytes, "str | None"], Any]


def _encode_extra(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # pydantic v2 models
    if dump is not None:
        return dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__qualname__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_encode_extra)
encode: Callable[[Any], bytes] = _encoder.encode

#: The one broker header (or attribute) in which a channel carries all of an envelope's headers, as a
#: JSON object, where the driver handles many headers slowly (RabbitMQ, Kafka) or few (SQS).
PACKED_HEADERS = "tidings.headers"
pack_headers: Callable[[dict[str, str]], bytes] = msgspec.json.Encoder().encode
#: Raises `msgspec.DecodeError` (or `TypeError` for a value that is not text) on anything else.
unpack_headers: Callable[[bytes | str], dict[str, str]] = msgspec.json.Decoder(dict[str, str]).decode


def _is_pydantic_model(target: Any) -> bool:
    return isinstance(target, type) and hasattr(target, "model_validate_json")


def union_members(annotation: Any) -> tuple[Any, ...]:
    """The members of `A | B` or `Union[A, B]`; a one-tuple for anything else."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _single_decoder(target: Any) -> Callable[[bytes], Any]:
    if _is_pydantic_model(target):
        return target.model_validate_json  # type: ignore[no-any-return]
    if target in (Any, object, None, dict):
        return msgspec.json.Decoder().decode
    return msgspec.json.Decoder(target).decode


def decoder_for(target: Any, names: dict[str, Any] | None = None) -> Decoder:
    """Build the decoder for a handler's declared message type.

    For a union of message classes the message name header picks the member (`names` maps wire names
    to members), so no type tag is needed in the body.
    """
    members = union_members(target)
    if len(members) == 1:
        decode = _single_decoder(target)
        return lambda body, _name: decode(body)
    by_name = {name: _single_decoder(member) for name, member in (names or {}).items()}
    in_order = [_single_decoder(member) for member in members if member is not type(None)]

    def decode_member(body: bytes, name: str | None) -> Any:
        chosen = by_name.get(name) if name is not None else None
        if chosen is not None:
            return chosen(body)
        last_error: Exception | None = None
        for candidate in in_order:
            try:
                return candidate(body)
            except (msgspec.ValidationError, ValueError) as error:
                last_error = error
        assert last_error is not None
        raise last_error

    return decode_member


def describe_decode_error(error: Exception) -> str:
    """One line saying which field was wrong, for msgspec and pydantic errors alike."""
    errors = getattr(error, "errors", None)
    if callable(errors):  # pydantic ValidationError
        parts = []
        for item in errors()[:3]:
            location = ".".join(str(part) for part in item.get("loc", ())) or "(root)"
            parts.append(f"field '{location}': {item.get('msg')}")
        return "; ".join(parts)
    return str(error)
