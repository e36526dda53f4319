"""What travels on a channel: an encoded body and string headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tidings import headers as h

__all__ = ["Envelope", "Headers", "message_name", "named"]

#: The headers of the message being handled, as handlers see them (read-only by convention).
Headers = Mapping[str, str]

T = TypeVar("T")

_NAME_ATTRIBUTE = "__tidings_name__"


def named(name: str) -> Callable[[type[T]], type[T]]:
    """Give a message class a stable name for the wire, independent of its Python name.

    Handlers can subscribe by name (with `*` wildcards for events), and renaming or moving the class
    later does not change what other services see::

        @named("order.placed")
        @dataclass
        class OrderPlaced: ...
    """
    if not name or name != name.strip():
        raise ValueError(f"a message name must be a non-empty word without surrounding spaces: {name!r}")

    def attach(cls: type[T]) -> type[T]:
        # Stored in the class's own dict so that subclasses do not inherit their parent's name.
        setattr(cls, _NAME_ATTRIBUTE, (cls, name))
        return cls

    return attach


def message_name(cls: type[Any]) -> str:
    """The wire name of a message class: its `@named` name, else its class name (never a path)."""
    declared = cls.__dict__.get(_NAME_ATTRIBUTE)
    if declared is not None and declared[0] is cls:
        return str(declared[1])
    return cls.__name__


class Envelope:
    """A message as channels carry it: the encoded body and its headers.

    Channels store and return both unchanged. Delivery time, priority and expiry are headers too, so
    that every channel can honour them on receive even where its broker has no native field.
    """

    __slots__ = ("body", "headers")

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.body = body
        self.headers = headers

    def __repr__(self) -> str:
        return (
            f"Envelope(id={self.message_id!r}, endpoint={self.headers.get(h.ENDPOINT)!r}, "
            f"name={self.headers.get(h.MESSAGE_NAME)!r}, {len(self.body)} bytes)"
        )

    @property
    def message_id(self) -> str:
        return self.headers.get(h.MESSAGE_ID, "")

    @property
    def endpoint(self) -> str | None:
        return self.headers.get(h.ENDPOINT)

    @property
    def deliver_at(self) -> float | None:
        value = self.headers.get(h.DELIVER_AT)
        return None if value is None else float(value)

    @property
    def priority(self) -> int:
        value = self.headers.get(h.PRIORITY)
        return 0 if value is None else int(value)

    @property
    def expires_at(self) -> float | None:
        value = self.headers.get(h.EXPIRES_AT)
        return None if value is None else float(value)

    @property
    def attempt(self) -> int:
        value = self.headers.get(h.ATTEMPT)
        return 1 if value is None else int(value)

    def with_headers(self, changes: Mapping[str, str | None]) -> Envelope:
        """A copy with headers set (or removed where the value is None); the body is shared."""
        headers = dict(self.headers)
        for key, value in changes.items():
            if value is None:
                headers.pop(key, None)
            else:
                headers[key] = value
        return Envelope(self.body, headers)
