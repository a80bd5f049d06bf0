"""The project's user-facing errors: one base type, CNodeError, and a subtype per kind of failure."""

from __future__ import annotations

__all__ = ["CNodeError", "CheckpointError", "DataError", "CertificateWithheldError"]


class CNodeError(ValueError):
    """Bad input or an unusable result: the message is one line saying what was expected and what was got."""


class CheckpointError(CNodeError):
    """A checkpoint is missing, unreadable, foreign, of another format version, or does not match its config."""


class DataError(CNodeError):
    """A dataset is missing, corrupt, or could not be downloaded; or input tensors are not images in [0, 1]."""


class CertificateWithheldError(CNodeError):
    """No sound certificate can be given (float32 round-off above the slack, an LMI that is not certified)."""
