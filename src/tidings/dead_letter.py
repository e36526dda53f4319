"""The dead-letter store: where messages go when retries are exhausted or they cannot be handled.

Nothing is dropped: a dead letter keeps the payload, the headers, the endpoint and channel, the
exception with its traceback, the attempts and the first and last failure times. Operators list them,
look at one, replay one, a filtered set or all (back through the original channel to the same
endpoint, attempts reset, `tidings.replayed` set), or delete them, from Python or `tidings dead-letter`.

The store is a table in the app's database (`SqlDeadLetterStore`); apps without a database get an
in-memory store, which is lost with the process and meant for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, final

from uuid_utils import uuid7

from tidings import headers as h
from tidings._message import Envelope

if TYPE_CHECKING:
    from tidings._app import App

__all__ = [
    "EVERY_DEAD_LETTER",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterStore",
    "DeadLetters",
    "InMemoryDeadLetterStore",
]


@final
@dataclass(frozen=True)
class DeadLetter:
    """One message that could not be handled, with everything known about why."""

    id: str
    message_id: str
    endpoint: str
    channel: str
    body: bytes
    headers: dict[str, str]
    #: Why it is here: "failed" (retries exhausted or never retried), "unknown endpoint", "expired".
    reason: str
    exception_type: str
    exception_message: str
    traceback: str
    attempts: int
    first_failed_at: float
    last_failed_at: float

    @classmethod
    def of(
        cls,
        envelope: Envelope,
        *,
        channel: str,
        reason: str,
        error: BaseException,
        traceback: str,
        now: float,
    ) -> DeadLetter:
        first = envelope.headers.get(h.FIRST_FAILED_AT)
        return cls(
            id=str(uuid7()),
            message_id=envelope.message_id,
            endpoint=envelope.headers.get(h.ENDPOINT, ""),
            channel=channel,
            body=envelope.body,
            headers=dict(envelope.headers),
            reason=reason,
            exception_type=f"{type(error).__module__}.{type(error).__qualname__}",
            exception_message=str(error),
            traceback=traceback,
            attempts=envelope.attempt,
            first_failed_at=now if first is None else float(first),
            last_failed_at=now,
        )

    @property
    def payload(self) -> str:
        """The body as text (JSON), with undecodable bytes shown escaped."""
        return self.body.decode("utf-8", errors="backslashreplace")

    def replay_envelope(self) -> Envelope:
        """The message as it goes back to its channel: attempts reset, marked as replayed."""
        headers = {
            key: value
            for key, value in self.headers.items()
            if key not in (h.ATTEMPT, h.DELIVER_AT, h.FIRST_FAILED_AT, h.EXPIRES_AT)
        }
        headers[h.REPLAYED] = self.id
        return Envelope(self.body, headers)


@final
@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operation applies to; every field given must match."""

    endpoint: str | None = None
    channel: str | None = None
    #: Matches the exception's qualified name or its last part (`ValueError`).
    exception_type: str | None = None
    header: tuple[str, str] | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.endpoint is not None and letter.endpoint != self.endpoint:
            return False
        if self.channel is not None and letter.channel != self.channel:
            return False
        if self.exception_type is not None and self.exception_type not in (
            letter.exception_type,
            letter.exception_type.rpartition(".")[2],
        ):
            return False
        if self.header is not None and letter.headers.get(self.header[0]) != self.header[1]:
            return False
        if self.since is not None and letter.last_failed_at < self.since:
            return False
        return self.until is None or letter.last_failed_at <= self.until


#: Matches every dead letter.
EVERY_DEAD_LETTER = DeadLetterFilter()


class DeadLetterStore(Protocol):
    """Keeps dead letters. Implementations: in memory (tests) and a table in the app's database."""

    async def add(self, letter: DeadLetter) -> None:
        """Store a dead letter durably before returning."""
        ...

    async def list(
        self, where: DeadLetterFilter = ..., *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        """Matching dead letters, newest first."""
        ...

    async def get(self, letter_id: str) -> DeadLetter | None:
        """One dead letter by id."""
        ...

    async def delete(self, letter_ids: Sequence[str]) -> int:
        """Remove dead letters; returns how many were removed."""
        ...

    async def count(self, where: DeadLetterFilter = ...) -> int:
        """How many dead letters match."""
        ...


@final
class InMemoryDeadLetterStore:
    """Dead letters in a dict: lost with the process, for tests and apps without a database."""

    def __init__(self) -> None:
        self._letters: dict[str, DeadLetter] = {}

    async def add(self, letter: DeadLetter) -> None:
        self._letters[letter.id] = letter

    async def list(
        self, where: DeadLetterFilter = EVERY_DEAD_LETTER, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        found = [letter for letter in self._letters.values() if where.matches(letter)]
        found.sort(key=lambda letter: (letter.last_failed_at, letter.id), reverse=True)
        return found[offset : offset + limit]

    async def get(self, letter_id: str) -> DeadLetter | None:
        return self._letters.get(letter_id)

    async def delete(self, letter_ids: Sequence[str]) -> int:
        return sum(self._letters.pop(letter_id, None) is not None for letter_id in letter_ids)

    async def count(self, where: DeadLetterFilter = EVERY_DEAD_LETTER) -> int:
        return sum(where.matches(letter) for letter in self._letters.values())


@final
class DeadLetters:
    """The operator's view of an app's dead letters: `app.dead_letters`."""

    def __init__(self, app: App, store: DeadLetterStore) -> None:
        self._app = app
        self.store = store

    async def list(
        self, where: DeadLetterFilter = EVERY_DEAD_LETTER, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        return await self.store.list(where, limit=limit, offset=offset)

    async def count(self, where: DeadLetterFilter = EVERY_DEAD_LETTER) -> int:
        return await self.store.count(where)

    async def get(self, letter_id: str) -> DeadLetter | None:
        return await self.store.get(letter_id)

    async def replay(self, letter_id: str) -> DeadLetter | None:
        """Send one dead letter back through its channel to its endpoint; None if not found."""
        letter = await self.store.get(letter_id)
        if letter is None:
            return None
        await self._send_back([letter])
        return letter

    async def replay_all(self, where: DeadLetterFilter = EVERY_DEAD_LETTER, *, batch: int = 100) -> int:
        """Replay every matching dead letter; returns how many went back."""
        replayed = 0
        while letters := await self.store.list(where, limit=batch):
            await self._send_back(letters)
            replayed += len(letters)
        return replayed

    async def delete(self, letter_ids: Sequence[str]) -> int:
        return await self.store.delete(letter_ids)

    async def delete_all(self, where: DeadLetterFilter = EVERY_DEAD_LETTER) -> int:
        deleted = 0
        while letters := await self.store.list(where, limit=500):
            deleted += await self.store.delete([letter.id for letter in letters])
        return deleted

    async def _send_back(self, letters: Sequence[DeadLetter]) -> None:
        # Sent before deleted: a crash in between replays twice (deduplication), never zero times.
        by_channel: dict[str, list[Envelope]] = {}
        for letter in letters:
            by_channel.setdefault(letter.channel, []).append(letter.replay_envelope())
        for channel, envelopes in by_channel.items():
            await self._app.channel(channel).send(envelopes)
        await self.store.delete([letter.id for letter in letters])
