"""The names of the headers tidings puts on every message.

All framework headers share the `tidings.` prefix so that user headers (for example `tenant`) never
collide with them; `traceparent` keeps its W3C name so that other tools can read it. Header values are
strings on every channel.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTEMPT",
    "CAUSATION_ID",
    "CONTENT_TYPE",
    "CORRELATION_ID",
    "DELIVER_AT",
    "ENDPOINT",
    "EXPIRES_AT",
    "FIRST_FAILED_AT",
    "FRAMEWORK_PREFIX",
    "MESSAGE_ID",
    "MESSAGE_NAME",
    "NOT_PROPAGATED",
    "ORDERING_KEY",
    "PRIORITY",
    "REPLAYED",
    "ROUTING_SLIP",
    "TIMESTAMP",
    "TRACEPARENT",
]

FRAMEWORK_PREFIX: Final = "tidings."

#: UUIDv7 of the message; every per-subscriber copy of one event shares it.
MESSAGE_ID: Final = "tidings.id"
#: The id of the first message of the conversation; inherited by everything sent while handling.
CORRELATION_ID: Final = "tidings.correlation-id"
#: The id of the message being handled when this one was sent.
CAUSATION_ID: Final = "tidings.causation-id"
#: When the message was first sent, in seconds since the epoch.
TIMESTAMP: Final = "tidings.timestamp"
#: The message's stable name (see `tidings.named`); never a class path.
MESSAGE_NAME: Final = "tidings.name"
#: How the body is encoded; `application/json` unless declared otherwise.
CONTENT_TYPE: Final = "tidings.content-type"
#: The endpoint id this copy is for: a consumer runs exactly that handler.
ENDPOINT: Final = "tidings.endpoint"
#: Channels the copy still has to pass through before its endpoint runs, comma separated.
ROUTING_SLIP: Final = "tidings.routing-slip"
#: Messages with the same key keep their order on channels that order by key (Kafka partitions,
#: SQS FIFO message groups); set it per message, e.g. to an aggregate or tenant id.
ORDERING_KEY: Final = "tidings.ordering-key"
#: 1 for the first try; a delayed retry re-sends the copy with attempt + 1.
ATTEMPT: Final = "tidings.attempt"
#: Not to be delivered before this time, in seconds since the epoch.
DELIVER_AT: Final = "tidings.deliver-at"
#: Higher is sooner, on channels that order by priority.
PRIORITY: Final = "tidings.priority"
#: Dropped (or dead-lettered) when received after this time, in seconds since the epoch.
EXPIRES_AT: Final = "tidings.expires-at"
#: When handling this copy first failed, in seconds since the epoch; set by the first delayed retry.
FIRST_FAILED_AT: Final = "tidings.first-failed-at"
#: Set on a message replayed from the dead-letter store.
REPLAYED: Final = "tidings.replayed"
#: W3C trace context of the span that sent the message.
TRACEPARENT: Final = "traceparent"

#: Headers that describe one send, not the conversation: never copied onto messages sent by a handler.
NOT_PROPAGATED: Final = frozenset({DELIVER_AT, PRIORITY, EXPIRES_AT, TRACEPARENT})
