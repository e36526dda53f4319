"""Middleware around handling and sending; built-in policies live beside the base class."""

from __future__ import annotations

from tidings.middleware.base import CallNext, Middleware, Outgoing, SendNext, scoped

__all__ = ["CallNext", "Middleware", "Outgoing", "SendNext", "scoped"]
