"""What a handler and its middleware know about the message being handled."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, final

from tidings import headers as h
from tidings._serialization import describe_decode_error
from tidings.exceptions import SerializationError

if TYPE_CHECKING:
    from tidings._app import App
    from tidings._message import Envelope
    from tidings._registry import Endpoint
    from tidings.channels.base import Delivery

__all__ = ["MessageContext", "current_context"]

_UNDECODED: Any = object()


@final
class MessageContext:
    """One handling of one message by one endpoint.

    Handlers receive it by annotating a parameter with `MessageContext`; middleware receive it as their
    first argument. `scope` holds per-handling resources (a database session, a dedup key, ...).
    """

    # Optional fields are class-level defaults, so that the inline path only sets four attributes.
    envelope: Envelope | None = None
    delivery: Delivery | None = None
    channel: str | None = None
    #: Set by test consumers: failures propagate instead of being retried or dead-lettered.
    raise_errors: bool = False
    _scope: dict[str, Any] | None = None

    def __init__(
        self, app: App, endpoint: Endpoint, headers: dict[str, str], message: Any = _UNDECODED
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self.headers = headers
        self._message = message

    @classmethod
    def for_delivery(
        cls, app: App, endpoint: Endpoint, delivery: Delivery, channel: str, *, raise_errors: bool
    ) -> MessageContext:
        """The context of a message received from a channel, decoded when first asked for."""
        context = cls(app, endpoint, delivery.envelope.headers)
        context.envelope = delivery.envelope
        context.delivery = delivery
        context.channel = channel
        if raise_errors:
            context.raise_errors = True
        return context

    def __repr__(self) -> str:
        return f"MessageContext(endpoint={self.endpoint.id!r}, message_id={self.message_id!r})"

    @property
    def scope(self) -> dict[str, Any]:
        """Resources that live as long as this handling (a database session, a dedup key, ...)."""
        if self._scope is None:
            self._scope = {}
        return self._scope

    @property
    def message(self) -> Any:
        """The payload, decoded into the endpoint's declared type on first access."""
        if self._message is _UNDECODED:
            assert self.envelope is not None
            try:
                self._message = self.endpoint.decode(self.envelope.body, self.headers.get(h.MESSAGE_NAME))
            except Exception as error:
                raise SerializationError(
                    f"endpoint '{self.endpoint.id}' could not decode message "
                    f"{self.message_id or '(no id)'} into {self.endpoint.message_type_name}: "
                    f"{describe_decode_error(error)}",
                    envelope=self.envelope,
                ) from error
        return self._message

    @property
    def message_id(self) -> str:
        return self.headers.get(h.MESSAGE_ID, "")

    @property
    def endpoint_id(self) -> str:
        return self.endpoint.id

    @property
    def attempt(self) -> int:
        """1 for the first try; counts delayed retries."""
        value = self.headers.get(h.ATTEMPT)
        return 1 if value is None else int(value)

    @property
    def is_asynchronous(self) -> bool:
        """Whether the message came from a channel (rather than inline from a bus)."""
        return self.delivery is not None


#: The handling in progress in this task or thread, if any.
current_context: ContextVar[MessageContext | None] = ContextVar("tidings_context", default=None)
