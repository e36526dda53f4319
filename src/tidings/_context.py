"""What a handler and its middleware know about the message being handled."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, final

from tidings import headers as h
from tidings._serialization import describe_decode_error
from tidings.exceptions import SerializationError

if TYPE_CHECKING:
    from tidings._app import App
    from tidings._message import Envelope
    from tidings._registry import Endpoint
    from tidings.channels.base import Delivery
    from tidings.middleware.base import Outgoing

__all__ = ["MessageContext", "Scope", "handling_scope"]

_UNDECODED: Any = object()
_MESSAGE_NAME: Final = h.MESSAGE_NAME


@final
class MessageContext:
    """One handling of one message by one endpoint.

    Handlers receive it by annotating a parameter with `MessageContext`; middleware receive it as their
    first argument. `scope` holds per-handling resources (a database session, a dedup key, ...).
    """

    __slots__ = (
        "_message",
        "_scope",
        "app",
        "channel",
        "delivery",
        "endpoint",
        "envelope",
        "headers",
        "raise_errors",
    )

    def __init__(
        self,
        app: App,
        endpoint: Endpoint,
        headers: dict[str, str],
        message: Any = _UNDECODED,
        delivery: Delivery | None = None,
        channel: str | None = None,
        raise_errors: bool = False,
    ) -> None:
        self.app = app
        self.endpoint = endpoint
        self.headers = headers
        self._message = message
        self.delivery = delivery
        self.envelope: Envelope | None = None if delivery is None else delivery.envelope
        self.channel = channel
        #: Set by test consumers: failures propagate instead of being retried or dead-lettered.
        self.raise_errors = raise_errors
        self._scope: dict[str, Any] | None = None

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
        message = self._message
        if message is not _UNDECODED:
            return message
        assert self.envelope is not None
        try:
            self._message = self.endpoint.decode(self.envelope.body, self.headers.get(_MESSAGE_NAME))
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


Scope = tuple[MessageContext | None, "list[Outgoing] | None"]

#: What is in progress in this task or thread: the handling, if any, and the messages waiting for it
#: (or for the bus call or transaction around it) to succeed before they are sent. One variable for
#: both, because setting a context variable is a large part of what a handling costs.
handling_scope: ContextVar[Scope] = ContextVar("tidings_scope", default=(None, None))
