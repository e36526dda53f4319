"""Every exception tidings raises, under one root.

```
TidingsError
├── ConfigurationError (also a ValueError)   the app cannot start as configured
├── DriverMissing (also an ImportError)       a channel's driver is not installed
├── MessageError                              about one message; carries it as `.envelope`
│   ├── HandlerNotFound                       nothing handles this command or query
│   ├── EndpointNotFound                      the message names an endpoint this app does not have
│   ├── SerializationError                    the payload could not be encoded or decoded
│   ├── MessageExpired                        the message outlived its time to live
│   └── HandlerTimedOut                       a handler ran longer than its timeout
└── ChannelError                              a channel failed; carries its name as `.channel`
    ├── ChannelUnavailable                    the broker or database cannot be reached
    └── PublishFailed                         the broker did not confirm a publish
```

Messages say what went wrong and what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidings._message import Envelope

__all__ = [
    "ChannelError",
    "ChannelUnavailable",
    "ConfigurationError",
    "DriverMissing",
    "EndpointNotFound",
    "HandlerNotFound",
    "HandlerTimedOut",
    "MessageError",
    "MessageExpired",
    "PublishFailed",
    "SerializationError",
    "TidingsError",
]


class TidingsError(Exception):
    """The root of every exception raised by tidings."""


class ConfigurationError(TidingsError, ValueError):
    """The app's handlers, channels or options do not fit together; raised at start-up."""


class DriverMissing(TidingsError, ImportError):
    """A channel needs a driver that is not installed."""

    def __init__(self, channel_kind: str, extra: str, module: str) -> None:
        super().__init__(
            f"{channel_kind} needs the '{module}' package, which is not installed. "
            f"Install it with: pip install 'tidings[{extra}]'"
        )
        self.extra = extra


class MessageError(TidingsError):
    """An error about one message. `envelope` is the message as it travels, when there is one."""

    def __init__(self, text: str, *, envelope: Envelope | None = None) -> None:
        super().__init__(text)
        self.envelope = envelope


class HandlerNotFound(MessageError):
    """A command or query was sent that no handler accepts."""


class EndpointNotFound(MessageError):
    """A message targets an endpoint id that this app does not define (renamed or removed)."""


class SerializationError(MessageError):
    """A payload could not be encoded, or decoded into the handler's declared type."""


class MessageExpired(MessageError):
    """A message was received after its time to live ran out."""


class HandlerTimedOut(MessageError):
    """A handler ran longer than its `@handler_timeout`; counted as a failure and retried."""


class ChannelError(TidingsError):
    """A channel failed. `channel` names it."""

    def __init__(self, text: str, *, channel: str) -> None:
        super().__init__(text)
        self.channel = channel


class ChannelUnavailable(ChannelError):
    """The broker or database behind a channel cannot be reached."""


class PublishFailed(ChannelError):
    """The broker did not accept or confirm messages. `envelopes` are the ones not confirmed."""

    def __init__(self, text: str, *, channel: str, envelopes: list[Envelope]) -> None:
        super().__init__(text, channel=channel)
        self.envelopes = envelopes
