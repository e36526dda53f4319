"""Errors of the SQL layer, all under tidings' one root."""

from __future__ import annotations

from tidings.exceptions import ChannelUnavailable, ConfigurationError, TidingsError

__all__ = ["DatabaseUnavailable", "SchemaMissing", "TransactionRolledBack"]


class DatabaseUnavailable(ChannelUnavailable):
    """The app's database cannot be reached. `url` is the database URL without its password."""

    def __init__(self, text: str, *, url: str, channel: str = "") -> None:
        super().__init__(text, channel=channel)
        self.url = url


class SchemaMissing(ConfigurationError):
    """The tidings tables do not exist, or are at another version than this tidings expects."""


class TransactionRolledBack(TidingsError):
    """A transaction was rolled back although its outer block finished without an exception.

    This happens when an exception left a nested `transaction()` block and was caught before the
    outermost block ended: the shared transaction cannot commit half of the work.
    """
