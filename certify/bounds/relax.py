"""Sound linear relaxations of a slope-restricted activation on an interval: k z + lo <= sigma(z) <= k z + up.

One slope per neuron (the chord slope), two offsets: the exact min and max of g(z) = sigma(z) - k z on [l, u],
taken over the endpoints and every interior point where sigma'(z) = k. For a convex sigma (smooth leaky ReLU,
leaky ReLU) the upper line is the chord and the lower one the tangent parallel to it; for tanh it is the tightest
pair of parallel lines with the chord's slope. Computed in float64 with a small outward margin.

A `CachedBox` keeps the relaxation computed on it (`relaxation`): back-substitution relaxes the same boxes in every
backward pass it runs through them.

`line_offsets(act, lo, hi, k)` gives the same exact offsets for any slope k: a line of slope k with the lower offset
lies below sigma on the whole interval, whatever k is. The optimised lower lines (certify.bounds.optimise, alpha-CROWN's
idea) use it with a slope per neuron and margin row, differentiable in k; a `SlopedBox` carries them through a
backward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contraction.slopes import Activation

__all__ = ["Relaxation", "relax", "line_offsets", "CachedBox", "SlopedBox", "relaxation"]

MARGIN = 1e-12  # outward, relative to 1 + |sigma| at the endpoints: covers float64 error in g's extrema
NARROW = 1e-9  # intervals narrower than this use the slope at the midpoint instead of the chord


@dataclass(frozen=True)
class Relaxation:
    """slope * z + lower <= sigma(z) <= slope * z + upper for every z in the interval it was built on."""

    slope: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def relax(act: Activation, lo: torch.Tensor, hi: torch.Tensor) -> Relaxation:
    """Parallel-chord relaxation of `act` on [lo, hi] (elementwise, lo <= hi), valid for every z in the interval."""
    lo = lo.to(torch.float64)
    hi = torch.maximum(hi.to(torch.float64), lo)
    s_lo, s_hi = act.fn(lo), act.fn(hi)
    width = hi - lo
    mid = 0.5 * (lo + hi)
    narrow = width < NARROW
    chord = (s_hi - s_lo) / torch.where(narrow, torch.ones_like(width), width)
    k = torch.where(narrow, act.deriv(mid), chord).clamp(act.a, act.b)
    lower, upper = line_offsets(act, lo, hi, k)
    return Relaxation(slope=k, lower=lower, upper=upper)


def line_offsets(act: Activation, lo: torch.Tensor, hi: torch.Tensor,
                 k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper): k z + lower <= sigma(z) <= k z + upper for every z in [lo, hi] (float64, lo <= hi), the exact
    min and max of g(z) = sigma(z) - k z over the endpoints, the midpoint and every point where sigma' = k, moved out
    by MARGIN (and by b times half the width of a NARROW interval). Any slope k gives sound offsets; differentiable in
    k."""
    candidates = [lo, hi, 0.5 * (lo + hi)] + [torch.minimum(torch.maximum(z, lo), hi) for z in act.tangent_points(k)]
    values = [act.fn(z) for z in candidates]  # sigma at lo and hi first: the margin's scale
    g = torch.stack([v - k * z for v, z in zip(values, candidates)])
    width = hi - lo
    margin = MARGIN * (1.0 + values[0].abs() + values[1].abs()) \
        + 0.5 * act.b * torch.where(width < NARROW, width, torch.zeros_like(width))
    return g.amin(0) - margin, g.amax(0) + margin


class CachedBox(tuple):
    """A box (lo, hi) that keeps the relaxation of each activation computed on it (its tensors are not changed)."""

    def __new__(cls, lo: torch.Tensor, hi: torch.Tensor) -> "CachedBox":
        box = super().__new__(cls, (lo, hi))
        box.relaxations = {}
        return box


class SlopedBox(CachedBox):
    """The CachedBox `base` whose backward passes use, for the rows of one pass (`rows`: the input of each row), their
    own lower lines: slope `slopes` [R, ...] and offset `offsets` [R, ...] (`line_offsets` on the rows' boxes) wherever
    a row's functional is positive; the chord (the relaxation's upper line) wherever it is negative. It shares `base`'s
    relaxations: a new set of slopes does not recompute the chords."""

    def __new__(cls, base: CachedBox, act: Activation, slopes: torch.Tensor, rows: torch.Tensor) -> "SlopedBox":
        lo, hi = base
        box = super().__new__(cls, lo, hi)
        box.relaxations = base.relaxations
        box.slopes = slopes
        box.offsets = line_offsets(act, lo[rows].to(torch.float64), torch.maximum(hi, lo)[rows].to(torch.float64),
                                   slopes)[0]
        return box


def relaxation(act: Activation, box: tuple[torch.Tensor, torch.Tensor]) -> Relaxation:
    """`relax(act, lo, hi)` on the box, computed once per activation on a CachedBox."""
    if not isinstance(box, CachedBox):
        return relax(act, box[0], box[1])
    if act not in box.relaxations:
        box.relaxations[act] = relax(act, box[0], box[1])
    return box.relaxations[act]
