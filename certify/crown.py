"""Linear bound propagation (CROWN-IBP style) for the margins z_y - z_j over the input set.

Intermediate bounds come from `certify.local` (intervals + local slopes); one backward pass then carries the
linear functional lambda . x from the readout to the input: through an Euler step x+ = x + h sigma(z),
z = T x + b, with the relaxation k z + lower <= sigma(z) <= k z + upper on each neuron's interval,
    lambda . x+ >= (lambda + T^T (h lambda k)) . x + (h lambda k) . b + sum (h lambda)^+ lower + (h lambda)^- upper,
the same through the embedding, and at the input the exact minimum of a linear function over the box (Linf) or
the ball (L2). All margins of a batch go back together as rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contraction.errors import CNodeError
from certify.local import LocalBounds, box_margins, local_bounds
from certify.relax import relax
from certify.unrolled import ConvLayer, Unrolled

__all__ = ["crown_margins", "box_and_crown_margins", "backward_margins"]


def _through(layer: ConvLayer, lam: torch.Tensor, scale: float, pre: tuple[torch.Tensor, torch.Tensor],
             net: Unrolled, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass lambda . (scale * sigma(layer x)) back to (mu . x + const) as a lower bound; returns (mu, const).

    lam is [P, C, H, W], one row per bounded margin; `rows` [P] says which input's relaxation each row uses."""
    r = relax(net.act, pre[0], pre[1])
    slope, lower, upper = (t.to(lam.dtype)[rows] for t in (r.slope, r.lower, r.upper))
    a = scale * lam
    const = (a.clamp_min(0) * lower + a.clamp_max(0) * upper).flatten(1).sum(1)
    g = a * slope
    const = const + (g.sum((2, 3)) * layer.bias).sum(1)
    return layer.adjoint(g), const


def backward_margins(net: Unrolled, bounds: LocalBounds, u: torch.Tensor, labels: torch.Tensor,
                     eps: float | torch.Tensor, norm: str, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """CROWN-IBP lower bounds of z_y - z_j over the input set, [B, K], given intermediate bounds.

    +inf at j = y; only the margins in `pairs` ([B, K] bool, default all) are bounded, the others are -inf."""
    if norm not in ("inf", "2"):
        raise CNodeError(f"norm must be 'inf' or '2', got {norm!r}")
    B = u.shape[0]
    W, c = net.readout_weight, net.readout_bias
    K = W.shape[0]
    is_y = F.one_hot(labels, K).bool()
    want = ~is_y if pairs is None else pairs & ~is_y
    b_idx, j_idx = want.nonzero(as_tuple=True)
    out = torch.full((B, K), -torch.inf, dtype=W.dtype, device=W.device).masked_fill(is_y, torch.inf)
    if len(b_idx) == 0:
        return out
    y = labels[b_idx]
    lam = (W[y] - W[j_idx]).view(len(b_idx), *bounds.lo.shape[1:])
    const = c[y] - c[j_idx]
    for k in range(len(net.steps) - 1, -1, -1):
        back, cst = _through(net.steps[k], lam, net.h, bounds.pre[k + 1], net, b_idx)
        lam, const = lam + back, const + cst
    lam, cst = _through(net.embed, lam, 1.0, bounds.pre[0], net, b_idx)
    const = const + cst
    flat = lam.flatten(1)
    mid = (0.5 * (bounds.input_lo + bounds.input_hi)).flatten(1)[b_idx]
    rad = (0.5 * (bounds.input_hi - bounds.input_lo)).flatten(1)[b_idx]
    low = const + (flat * mid).sum(1) - (flat.abs() * rad).sum(1)
    if norm == "2":
        e = torch.as_tensor(eps, dtype=u.dtype, device=u.device).expand(B)[b_idx]
        low = torch.maximum(low, const + (flat * u.flatten(1)[b_idx]).sum(1) - e * flat.norm(dim=1))
    out[b_idx, j_idx] = low
    return out


def box_and_crown_margins(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor,
                          norm: str, slack: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(local-box margins, crown margins) over the input set, [B, K] each, from one set of local bounds.

    Crown is the larger of the CROWN-IBP and the box bound; the backward pass runs only for the margins the
    boxes leave at or below `slack` (the others are already proven, and keep their box bound)."""
    bounds = local_bounds(net, u, eps, norm)
    box = box_margins(net, labels, bounds.lo, bounds.hi)
    todo = box <= torch.as_tensor(slack, dtype=box.dtype).reshape(-1, 1)
    return box, torch.maximum(backward_margins(net, bounds, u, labels, eps, norm, todo), box)


def crown_margins(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
                  slack: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Lower bounds of z_y - z_j over the input set: the larger of the CROWN-IBP and the local-box bound."""
    return box_and_crown_margins(net, u, labels, eps, norm, slack)[1]
