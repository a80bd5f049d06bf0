"""Optimised lower lines for the margins' backward pass (alpha-CROWN's idea, Xu et al. 2021, on this engine).

The backward pass (certify.bounds.crown.rounded_margins) relaxes each neuron of a sigma layer or an Euler-type step on
its pre-activation interval [l, u] by two parallel lines, the chord and the lowest line of the chord's slope. The
lower line may have any slope alpha: alpha z + min_[l, u] (sigma(z) - alpha z) lies below sigma on the interval
(certify.bounds.relax.line_offsets), and for a convex sigma the slopes [sigma'(l), sigma'(u)] give every tangent.
Which alpha is best depends on the margin: a row of the pass (an input's margin z_y - z_j) uses its own alpha per
neuron wherever its functional on sigma's output is positive (the lower line), the chord wherever it is negative.

`optimised_margins` starts every alpha at the chord's slope (the pass as it is: the first bound equals the CROWN
pass's) and climbs the rows' bounds by projected Adam steps on alpha in the slope range of sigma on the interval
(`Activation.slope_range`: [sigma'(l), sigma'(u)] for a convex sigma), keeping the best bound each row reached:
every iterate is a sound bound for its alphas, so the best of them is too. With the float32 terms
(certify.bounds.roundoff.Float32Terms) each row also bounds the float32 margin, C - R, as the CROWN pass does; a row
climbs the better of its two routes to a proof (C above the slack, or C - R above 0) and stops counting once proven.
The intermediate boxes are kept as given (the linear or refine stage's): only the last pass is optimised, so the
cost is a few dozen backward passes of the open margins. The stages of a Runge-Kutta step keep the parallel
lines."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from certify.bounds.crown import rounded_margins
from certify.bounds.layers import Act, FieldStep, Pre
from certify.bounds.local import LayerBounds
from certify.bounds.radius import unproven
from certify.bounds.relax import CachedBox, SlopedBox, relaxation
from certify.bounds.roundoff import Float32Terms
from certify.bounds.unrolled import Unrolled

__all__ = ["STEPS", "LR", "Optimised", "relaxed_layers", "optimised_margins", "raise_open"]

STEPS = 20  # Adam steps on the slopes
LR = 0.1  # Adam's step size, in slope units (slopes lie in [a, b], b = 1 for every activation here)


@dataclass
class Optimised:
    """`margins` [B, K]: lower bounds of z_y - z_j by the best slopes (+inf at j = y, -inf outside the margins
    asked); `rounded` [B, K]: lower bounds of the float32 margins, C - R (-inf without the float32 terms); `steps`:
    the Adam steps taken."""

    margins: torch.Tensor
    rounded: torch.Tensor
    steps: int


def relaxed_layers(net: Unrolled, pre: list[Pre]) -> list[int]:
    """The layers whose pre-activation box has a relaxation of sigma of its own: sigma layers and Euler-type steps with
    a box (the ones back-substitution refines and whose lower lines are optimised here; a Runge-Kutta step's stage
    boxes are kept as they are)."""
    return [k for k, layer in enumerate(net.layers[:-1]) if pre[k] is not None and isinstance(layer, (Act, FieldStep))]


def _number(t: torch.Tensor) -> torch.Tensor:
    """t with every non-finite entry (NaN, an overflow to +-inf) as -inf: it proves nothing."""
    return t.masked_fill(~torch.isfinite(t), -torch.inf)


def optimised_margins(net: Unrolled, bounds: LayerBounds, u: torch.Tensor, labels: torch.Tensor,
                      eps: float | torch.Tensor, norm: str, pairs: torch.Tensor,
                      slack: torch.Tensor | float = 0.0, terms: Float32Terms | None = None, *,
                      steps: int = STEPS, lr: float = LR) -> Optimised:
    """Lower bounds of the margins in `pairs` ([B, K] bool) over `bounds` by the backward pass with optimised lower
    lines (module docstring); `slack` (scalar, [B] or [B, K]): what C must exceed; with `terms`, `bounds` holds the
    float32 states' pre-activations (certify.bounds.crown.float32_boxes) and C - R > 0 proves a margin too."""
    B, K = pairs.shape
    is_y = F.one_hot(labels, K).bool()
    want = pairs & ~is_y
    best = torch.full((B, K), -torch.inf, dtype=net.readout_weight.dtype, device=u.device).masked_fill(is_y, torch.inf)
    best32 = torch.full_like(best, -torch.inf)
    b_idx, j_idx = want.nonzero(as_tuple=True)
    if not len(b_idx):
        return Optimised(best, best32, 0)
    s = torch.as_tensor(slack, dtype=best.dtype, device=best.device)
    s = (s.reshape(-1, 1) if s.dim() == 1 else s).expand(B, K)[b_idx, j_idx]
    act = net.act
    free = relaxed_layers(net, bounds.pre)
    base = [p if p is None or isinstance(p, CachedBox) else CachedBox(*p) for p in bounds.pre]
    ranges, alphas = {}, []
    for k in free:
        lo, hi = base[k]  # type: ignore[misc]
        dl, du = act.slope_range(lo[b_idx], torch.maximum(hi, lo)[b_idx])
        chord = relaxation(act, base[k]).slope[b_idx]  # type: ignore[arg-type]
        ranges[k] = (torch.minimum(dl, du).clamp(act.a, act.b), torch.maximum(dl, du).clamp(act.a, act.b))
        alphas.append(chord.clone().clamp(*ranges[k]).requires_grad_())
    opt = torch.optim.Adam(alphas, lr=lr) if alphas else None
    open_ = torch.ones(len(b_idx), dtype=torch.bool, device=u.device)
    taken = 0
    for step in range(steps + 1):
        pre = list(base)
        for k, alpha in zip(free, alphas):
            pre[k] = SlopedBox(base[k], act, alpha, b_idx)  # type: ignore[arg-type]
        with torch.enable_grad():
            c, r = rounded_margins(net, LayerBounds(bounds.boxes, pre, bounds.input_lo, bounds.input_hi,
                                                    bounds.balls), u, labels, eps, norm, want, terms)
            c, r = c[b_idx, j_idx], r[b_idx, j_idx]
            c32 = c - r if terms is not None else torch.full_like(c, -torch.inf)
            # each row climbs its better route to a proof: C - slack (where the slack is a number), C - R; C itself
            # where neither is a number
            value = torch.maximum(torch.where(torch.isfinite(s), c - s, -torch.inf), c32)
            value = torch.where(torch.isfinite(value), value, c)
        best[b_idx, j_idx] = torch.maximum(best[b_idx, j_idx], _number(c.detach()))
        best32[b_idx, j_idx] = torch.maximum(best32[b_idx, j_idx], _number(c32.detach()))
        open_ &= ~(best[b_idx, j_idx] > s) & ~(best32[b_idx, j_idx] > 0)  # fail closed: NaN is open
        climb = open_ & torch.isfinite(value)
        if opt is None or step == steps or not bool(climb.any()):
            break
        opt.zero_grad()
        (-value[climb].sum()).backward()
        opt.step()
        taken += 1
        with torch.no_grad():
            for k, alpha in zip(free, alphas):
                alpha.copy_(torch.minimum(torch.maximum(alpha, ranges[k][0]), ranges[k][1]))
    return Optimised(best, best32, taken)


def raise_open(net: Unrolled, bounds: LayerBounds, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor,
               norm: str, margins: torch.Tensor, rounded: torch.Tensor, slack: torch.Tensor | float,
               terms: Float32Terms | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`margins` (C) and `rounded` (C - R), [B, K], each raised to the pass with optimised lower lines over `bounds`
    on the margins still open (C not above `slack` and C - R not above 0); the others stay as they are."""
    o = optimised_margins(net, bounds, u, labels, eps, norm, unproven(margins, slack) & ~(rounded > 0), slack, terms)
    return torch.maximum(margins, o.margins), torch.maximum(rounded, o.rounded)
