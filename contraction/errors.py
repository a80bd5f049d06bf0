"""The project's single user-facing error type."""

from __future__ import annotations

__all__ = ["CNodeError"]


class CNodeError(ValueError):
    """Bad input or an unusable result: the message is one line saying what was expected and what was got."""
