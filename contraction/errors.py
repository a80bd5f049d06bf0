"""The project's user-facing errors: one base type, CNodeError, and a subtype per kind of failure."""

from __future__ import annotations

__all__ = ["CNodeError", "CheckpointError", "DataError", "CertificateWithheldError", "THREAT_NORMS", "check_norm",
           "norm_error"]

THREAT_NORMS = ("inf", "2")
"""The norms of input sets, attacks, radii and the engine's Lipschitz rules: Linf and L2."""


class CNodeError(ValueError):
    """Bad input or an unusable result: the message is one line saying what was expected and what was got."""


class CheckpointError(CNodeError):
    """A checkpoint is missing, unreadable, foreign, of another format version, or does not match its config."""


class DataError(CNodeError):
    """A dataset is missing, corrupt, or could not be downloaded; or input tensors are not images in [0, 1]."""


class CertificateWithheldError(CNodeError):
    """No sound certificate can be given (float32 round-off above the slack, an LMI that is not certified)."""


def norm_error(norm: object, allowed: tuple[str, ...] = THREAT_NORMS) -> CNodeError:
    """The one-line error for a norm outside `allowed` (to raise at the end of a dispatch on the norm)."""
    names = [repr(n) for n in allowed]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return CNodeError(f"norm must be {listed}, got {norm!r}")


def check_norm(norm: object, allowed: tuple[str, ...] = THREAT_NORMS) -> str:
    """`norm` if it is one of `allowed`, else `norm_error`."""
    if norm not in allowed:
        raise norm_error(norm, allowed)
    return norm  # type: ignore[return-value]
