"""Linear bound propagation (CROWN-IBP style) for the margins z_y - z_j over the input set.

Intermediate bounds come from `certify.bounds.local` (intervals + local slopes); one backward pass then carries the
linear functional lambda . x from the last layer's input to the network's input through each layer's `backward`
rule (certify.bounds.layers: affine layers exactly, sigma and the Euler steps x+ = x + h sigma(T x + b) through the
relaxation k z + lower <= sigma(z) <= k z + upper on each neuron's interval), and at the input takes the exact
minimum of a linear function over the box (Linf) or the ball (L2). All margins of a batch go back together as rows.

With the float32 terms (certify.bounds.roundoff.Float32Terms) the same pass also bounds the float32 network's margin:
over boxes that hold the float32 states' pre-activations (`float32_boxes`: each exact box widened by how far they
may lie outside it, or boxes refined for them, certify.bounds.backsub), R = sum_i |lambda_i| . own_i (lambda_i the
functional on layer i's output, own_i the error layer i adds there) is the most the added errors can take off:
float32 margin >= C - R for the pass's bound C, C itself a bound of the exact margin (those boxes hold the exact
states too: the exact network is the float32 one with every added error 0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contraction.errors import check_norm
from contraction.floats import TINY
from certify.bounds.layers import Pre, row_dot
from certify.bounds.local import LayerBounds, box_margins, local_bounds
from certify.bounds.radius import unproven
from certify.bounds.roundoff import ENGINE_MARGIN, Float32Terms
from certify.bounds.unrolled import Unrolled

__all__ = ["box_and_crown_margins", "crown_stage", "backward_margins", "rounded_margins", "float32_boxes",
           "input_minimum"]


def float32_boxes(bounds: LayerBounds, terms: Float32Terms) -> LayerBounds:
    """`bounds` with every pre-activation box widened by `terms.pre`: boxes of the float32 states' pre-activations."""
    pre: list[Pre] = [p if p is None or w is None else (p[0] - w, p[1] + w)
                      for p, w in zip(bounds.pre, terms.pre + [None])]
    return LayerBounds(bounds.boxes, pre, bounds.input_lo, bounds.input_hi, bounds.balls)


def backward_margins(net: Unrolled, bounds: LayerBounds, u: torch.Tensor, labels: torch.Tensor,
                     eps: float | torch.Tensor, norm: str, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """CROWN-IBP lower bounds of z_y - z_j over the input set, [B, K], given intermediate bounds.

    +inf at j = y; only the margins in `pairs` ([B, K] bool, default all) are bounded, the others are -inf."""
    return rounded_margins(net, bounds, u, labels, eps, norm, pairs)[0]


def rounded_margins(net: Unrolled, bounds: LayerBounds, u: torch.Tensor, labels: torch.Tensor,
                    eps: float | torch.Tensor, norm: str, pairs: torch.Tensor | None = None,
                    terms: Float32Terms | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, R), [B, K] each: C the lower bounds of `backward_margins` over `bounds`, R (with `terms`, `bounds` holding
    the float32 states' pre-activations: `float32_boxes`) the slack that bounds the float32 margin, float32 margin >=
    C - R over the input set, widened for the float64 engine's rounding (module docstring); without `terms` R is +inf
    (no such bound). C = +inf and R = 0 at j = y; margins not in `pairs` get C = -inf."""
    check_norm(norm)
    B = u.shape[0]
    W, c = net.readout_weight, net.readout_bias
    K = W.shape[0]
    is_y = F.one_hot(labels, K).bool()
    want = ~is_y if pairs is None else pairs & ~is_y
    b_idx, j_idx = want.nonzero(as_tuple=True)
    out = torch.full((B, K), -torch.inf, dtype=W.dtype, device=W.device).masked_fill(is_y, torch.inf)
    slack = torch.full_like(out, torch.inf).masked_fill(is_y, 0.0)
    if len(b_idx) == 0:
        return out, slack
    y = labels[b_idx]
    lam = W[y] - W[j_idx]  # one row per bounded margin, on the last layer's input
    const = c[y] - c[j_idx]
    if terms is not None:
        logits = terms.own[-1].to(W.dtype)
        r = logits[b_idx, y] + logits[b_idx, j_idx]
    for k in range(len(net.layers) - 2, -1, -1):
        if terms is not None:
            r = r + row_dot(lam.abs(), terms.own[k], b_idx)
        lam, const = net.layers[k].backward(lam, const, bounds.pre[k], b_idx)
    out[b_idx, j_idx] = input_minimum(lam, const, bounds, u, eps, norm, b_idx)
    if terms is not None:
        slack[b_idx, j_idx] = r * (1 + ENGINE_MARGIN) + TINY
    return out, slack


def input_minimum(lam: torch.Tensor, const: torch.Tensor, bounds: LayerBounds, u: torch.Tensor,
                  eps: float | torch.Tensor, norm: str, b_idx: torch.Tensor) -> torch.Tensor:
    """min of lam . u' + const over the input set of row r's input b_idx[r]: the exact minimum over the box
    (Linf, and the pixel box), in L2 also over the ball ||u' - u|| <= eps (the larger of the two)."""
    flat = lam.flatten(1)
    mid = (0.5 * (bounds.input_lo + bounds.input_hi)).flatten(1)[b_idx]
    rad = (0.5 * (bounds.input_hi - bounds.input_lo)).flatten(1)[b_idx]
    low = const + (flat * mid).sum(1) - (flat.abs() * rad).sum(1)
    if norm == "2":
        e = torch.as_tensor(eps, dtype=u.dtype, device=u.device).expand(u.shape[0])[b_idx]
        low = torch.maximum(low, const + (flat * u.flatten(1)[b_idx]).sum(1) - e * flat.norm(dim=1))
    return low


def box_and_crown_margins(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor,
                          norm: str, slack: torch.Tensor | float = 0.0, bounds: LayerBounds | None = None,
                          terms: Float32Terms | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(box margins, crown margins) over the input set, [B, K] each, from one set of intermediate bounds (`bounds`,
    the local boxes when not given).

    Crown is the larger of the CROWN-IBP and the box bound; the backward pass runs only for the margins the
    boxes leave unproven (at or below `slack`, or not a number; the others keep their box bound)."""
    return crown_stage(net, u, labels, eps, norm, slack, bounds, terms)[:2]


def crown_stage(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
                slack: torch.Tensor | float = 0.0, bounds: LayerBounds | None = None,
                terms: Float32Terms | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`box_and_crown_margins` and, with `terms`, lower bounds of the float32 margins by the backward pass over the
    float32 boxes, C - R (`rounded_margins`; -inf where the pass did not run or without `terms`)."""
    if bounds is None:
        bounds = local_bounds(net, u, eps, norm)
    box = box_margins(net, labels, bounds.lo, bounds.hi)
    todo = unproven(box, slack)
    crown = torch.maximum(backward_margins(net, bounds, u, labels, eps, norm, todo), box)
    if terms is None:
        return box, crown, torch.full_like(box, -torch.inf)
    c, r = rounded_margins(net, float32_boxes(bounds, terms), u, labels, eps, norm, todo, terms)
    return box, crown, c - r
