"""Slope-restricted activations as data: each entry is a function and its slope interval [a, b]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from contraction.errors import CNodeError

__all__ = ["Activation", "ACTIVATIONS", "get_activation"]


@dataclass(frozen=True)
class Activation:
    """A scalar activation with `a <= sigma'(z) <= b` for every z."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    deriv: Callable[[torch.Tensor], torch.Tensor]
    a: float
    b: float

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)


def _smooth_leaky_relu(a: float) -> Activation:
    """a*z + (1-a)*softplus(z): slopes in [a, 1] (open at both ends)."""
    return Activation(
        name="smooth_leaky_relu",
        fn=lambda z: a * z + (1.0 - a) * F.softplus(z),
        deriv=lambda z: a + (1.0 - a) * torch.sigmoid(z),
        a=a,
        b=1.0,
    )


def _leaky_relu(a: float) -> Activation:
    """max(z, a*z): slopes in [a, 1]."""
    return Activation(
        name="leaky_relu",
        fn=lambda z: F.leaky_relu(z, negative_slope=a),
        deriv=lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, a)),
        a=a,
        b=1.0,
    )


def _tanh(_a: float) -> Activation:
    """tanh: slopes in [0, 1]."""
    return Activation(
        name="tanh",
        fn=torch.tanh,
        deriv=lambda z: 1.0 - torch.tanh(z) ** 2,
        a=0.0,
        b=1.0,
    )


ACTIVATIONS: dict[str, Callable[[float], Activation]] = {
    "smooth_leaky_relu": _smooth_leaky_relu,
    "leaky_relu": _leaky_relu,
    "tanh": _tanh,
}


def get_activation(name: str, slope: float = 0.1) -> Activation:
    """Look up an activation by name; `slope` is the lower slope a of the leaky variants (0 < a < 1)."""
    if name not in ACTIVATIONS:
        raise CNodeError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    if not (isinstance(slope, (int, float)) and math.isfinite(slope) and 0.0 < slope < 1.0):
        raise CNodeError(f"activation slope must be in (0, 1), got {slope!r}")
    return ACTIVATIONS[name](float(slope))
