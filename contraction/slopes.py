"""Slope-restricted activations as data: each entry is a function and its slope interval [a, b]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from contraction.errors import CNodeError
from contraction.floats import TINY, gamma

__all__ = ["Activation", "ACTIVATIONS", "get_activation"]


@dataclass(frozen=True)
class Activation:
    """A scalar activation with `a <= sigma'(z) <= b` for every z.

    `slope_range(lo, hi)` gives the exact range of sigma' over [lo, hi] (local slopes); `tangent_points(k)` gives
    every z with sigma'(z) = k (where sigma(z) - k z can have an interior extremum; used by linear relaxations);
    `rounding(m)` bounds |fl32(sigma)(z) - sigma(z)| for float32 z with |z| <= m, the activation as PyTorch evaluates it
    in float32 (its constants rounded to float32 included) against the exact function (contraction.floats' model)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    deriv: Callable[[torch.Tensor], torch.Tensor]
    a: float
    b: float
    slope_range: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    tangent_points: Callable[[torch.Tensor], list[torch.Tensor]]
    rounding: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)


def _increasing_slopes(deriv: Callable[[torch.Tensor], torch.Tensor]):
    """Slope range of a convex activation (sigma' non-decreasing): [sigma'(lo), sigma'(hi)]."""
    return lambda lo, hi: (deriv(lo), deriv(hi))


def _smooth_leaky_relu(a: float) -> Activation:
    """a*z + (1-a)*softplus(z): slopes in [a, 1] (open at both ends); convex, so sigma' is increasing.

    softplus(z) = logaddexp(z, 0) = max(z, 0) + log1p(exp(-|z|)): monotone in every precision (F.softplus switches to
    z above its threshold 20, a drop of 2e-9 that breaks monotonicity in float64). Float32 error: a z and (1-a)
    softplus carry their constants' rounding, two products and a sum (u each); log1p(exp(-|z|)) within
    (1.45 * 8 + 8 + 1) u of its value (4-ulp exp and log1p; log1p(e) >= e ln 2 on [0, 1]); all <= gamma_32 (|z| + 1)."""
    deriv = lambda z: a + (1.0 - a) * torch.sigmoid(z)  # noqa: E731

    def tangent_points(k: torch.Tensor) -> list[torch.Tensor]:
        s = ((k - a) / (1.0 - a)).clamp(1e-300, 1.0 - 1e-16)
        return [torch.log(s) - torch.log1p(-s)]  # sigmoid(z) = s

    return Activation(
        name="smooth_leaky_relu",
        fn=lambda z: a * z + (1.0 - a) * torch.logaddexp(z, torch.zeros_like(z)),
        deriv=deriv,
        a=a,
        b=1.0,
        slope_range=_increasing_slopes(deriv),
        tangent_points=tangent_points,
        rounding=lambda m: gamma(32) * (m + 1.0) + 4 * TINY,
    )


def _leaky_relu(a: float) -> Activation:
    """max(z, a*z): slopes in [a, 1]; convex with its kink at 0."""

    def slope_range(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one, low = torch.ones_like(lo), torch.full_like(lo, a)  # in lo's dtype: no float32 rounding of a
        return torch.where(lo > 0, one, low), torch.where(hi > 0, one, low)

    return Activation(
        name="leaky_relu",
        fn=lambda z: F.leaky_relu(z, negative_slope=a),
        deriv=lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, a)),
        a=a,
        b=1.0,
        slope_range=slope_range,
        tangent_points=lambda k: [torch.zeros_like(k)],
        rounding=lambda m: gamma(2) * a * m + TINY,  # a*z: a rounded to float32, one product
    )


def _tanh(_a: float) -> Activation:
    """tanh: slopes in [0, 1]; sigma' = 1 - tanh^2 decreases in |z|."""
    deriv = lambda z: 1.0 - torch.tanh(z) ** 2  # noqa: E731

    def slope_range(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        near = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
        return deriv(torch.maximum(lo.abs(), hi.abs())), deriv(near)

    def tangent_points(k: torch.Tensor) -> list[torch.Tensor]:
        t = torch.sqrt((1.0 - k).clamp(0.0, 1.0)).clamp(max=1.0 - 1e-16)
        return [torch.atanh(t), -torch.atanh(t)]

    return Activation(
        name="tanh",
        fn=torch.tanh,
        deriv=deriv,
        a=0.0,
        b=1.0,
        slope_range=slope_range,
        tangent_points=tangent_points,
        rounding=lambda m: gamma(8) * m.clamp(max=1.0) + TINY,  # 4 ulps of |tanh z| <= min(|z|, 1)
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
