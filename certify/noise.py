"""Seeded input corruptions on [0, 1] images: Gaussian noise and salt-and-pepper."""

from __future__ import annotations

import torch

from contraction.errors import CNodeError

__all__ = ["gaussian_noise", "salt_and_pepper"]


def gaussian_noise(x: torch.Tensor, std: float, *, seed: int = 0) -> torch.Tensor:
    """x + N(0, std^2) per pixel, clipped to [0, 1]."""
    if not std >= 0:
        raise CNodeError(f"std must be >= 0, got {std}")
    gen = torch.Generator(device=x.device).manual_seed(seed)  # on the data's device
    return (x + std * torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)).clamp(0.0, 1.0)


def salt_and_pepper(x: torch.Tensor, amount: float, *, seed: int = 0) -> torch.Tensor:
    """A share `amount` of pixels set to 0 or 1 (half each, on average)."""
    if not 0.0 <= amount <= 1.0:
        raise CNodeError(f"amount must be in [0, 1], got {amount}")
    gen = torch.Generator(device=x.device).manual_seed(seed)  # on the data's device
    u = torch.rand(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    out = x.clone()
    out[u < amount / 2] = 0.0
    out[(u >= amount / 2) & (u < amount)] = 1.0
    return out
