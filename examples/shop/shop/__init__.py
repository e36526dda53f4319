"""A small shop: orders placed by command, handled by events on SQL channels and an outbox."""
