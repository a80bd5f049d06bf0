"""Certified radii from margins and pairwise Lipschitz constants: r = min_{j != y} (z_y - z_j - slack) / L_yj."""

from __future__ import annotations

import torch

from contraction.errors import CNodeError

__all__ = ["certified_radii", "certified_accuracy", "as_slack", "unproven", "float32_below"]


def float32_below(t: torch.Tensor | float) -> torch.Tensor:
    """The largest float32 values <= t (elementwise): a radius or eps cast down for a float32 attack, so the attack's
    ball lies inside the one certified or asked about (round-to-nearest can round up: false 'unsound' or 'falsified')."""
    t64 = torch.as_tensor(t, dtype=torch.float64)
    t32 = t64.to(torch.float32)
    return torch.where(t32.to(torch.float64) > t64, torch.nextafter(t32, torch.full_like(t32, -torch.inf)), t32)


def as_slack(slack: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A slack (scalar, per input [B], or per margin [B, K]) broadcasting against margins `like` [B, K]."""
    s = torch.as_tensor(slack, dtype=like.dtype, device=like.device)
    return s.reshape(-1, 1) if s.dim() == 1 else s


def unproven(margins: torch.Tensor, slack: torch.Tensor | float = 0.0) -> torch.Tensor:
    """[B, K] True where a margin's lower bound does not exceed its slack: fail closed, so a NaN bound or slack (which
    compares false) is unproven too."""
    return ~(margins > as_slack(slack, margins))


def certified_radii(
    logits: torch.Tensor, labels: torch.Tensor, constants: torch.Tensor, slack: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Radius per input: min_{j != y} (z_y - z_j - slack) / L_yj, and 0 if misclassified, tied, within slack or not a
    number.

    Shapes: logits [B, K], labels [B], constants [K, K] (L_yj > 0 off the diagonal), slack scalar, [B] or [B, K]."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or constants.shape != (logits.shape[1],) * 2:
        raise CNodeError(f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
                         f"constants {tuple(constants.shape)}")
    z = logits.to(torch.float64)
    K = z.shape[1]
    margins = z.gather(1, labels[:, None]) - z - as_slack(slack, z)  # [B, K]
    L = constants.to(device=z.device, dtype=torch.float64)[labels]  # [B, K]
    other = torch.ones_like(margins, dtype=torch.bool)
    other[torch.arange(z.shape[0], device=z.device), labels] = False
    ratio = torch.where(L > 0, margins / L.clamp_min(1e-300), torch.where(margins > 0, torch.inf, 0.0))
    ratio = torch.where(other, ratio, torch.inf)
    radius = ratio.amin(1) if K > 1 else torch.full((z.shape[0],), torch.inf, dtype=torch.float64, device=z.device)
    radius = torch.nan_to_num(radius, nan=0.0, posinf=torch.inf).clamp_min(0.0)  # a NaN margin or slack: nothing
    return torch.where(torch.isfinite(z).all(1), radius, 0.0)  # an overflowed logit proves nothing either


def certified_accuracy(radii: torch.Tensor, eps: float) -> float:
    """Share of inputs whose proven radius (a closed ball) reaches eps."""
    if radii.numel() == 0:
        return 0.0
    return float((radii >= eps).double().mean())
