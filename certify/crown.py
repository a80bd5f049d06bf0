"""Linear bound propagation (CROWN-IBP style) for the margins z_y - z_j over the input set.

Intermediate bounds come from `certify.local` (intervals + local slopes); one backward pass then carries the
linear functional lambda . x from the readout to the input: through an Euler step x+ = x + h sigma(z),
z = T x + b, with the relaxation k z + lower <= sigma(z) <= k z + upper on each neuron's interval,
    lambda . x+ >= (lambda + T^T (h lambda k)) . x + (h lambda k) . b + sum (h lambda)^+ lower + (h lambda)^- upper,
the same through the embedding, and at the input the exact minimum of a linear function over the box (Linf) or
the ball (L2). All margins of a batch go back together as rows."""

from __future__ import annotations

import torch

from contraction.errors import CNodeError
from certify.local import LocalBounds, local_bounds, margin_specs
from certify.relax import relax
from certify.unrolled import ConvLayer, Unrolled

__all__ = ["crown_margins", "backward_margins"]


def _through(layer: ConvLayer, lam: torch.Tensor, scale: float, pre: tuple[torch.Tensor, torch.Tensor],
             net: Unrolled) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass lambda . (scale * sigma(layer x)) back to (mu . x + const) as a lower bound; returns (mu, const).

    lam is [B, S, C, H, W] (S margins per input); the relaxation is per input, broadcast over the S rows."""
    r = relax(net.act, pre[0], pre[1])
    slope, lower, upper = (t.to(lam.dtype)[:, None] for t in (r.slope, r.lower, r.upper))
    a = scale * lam
    const = (a.clamp_min(0) * lower + a.clamp_max(0) * upper).flatten(2).sum(2)
    g = a * slope
    const = const + (g.sum((3, 4)) * layer.bias).sum(2)
    B, S = g.shape[:2]
    return layer.adjoint(g.flatten(0, 1)).view(B, S, *layer_shape(layer, g)), const


def layer_shape(layer: ConvLayer, g: torch.Tensor) -> tuple[int, int, int]:
    return (layer.weight.shape[1], g.shape[-2], g.shape[-1])


def _other_classes(labels: torch.Tensor, K: int) -> torch.Tensor:
    """Indices j != y per input, [B, K - 1]."""
    idx = torch.arange(K, device=labels.device).expand(labels.shape[0], K)
    return idx[idx != labels[:, None]].view(labels.shape[0], K - 1)


def backward_margins(net: Unrolled, bounds: LocalBounds, u: torch.Tensor, labels: torch.Tensor,
                     eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """CROWN-IBP lower bounds of z_y - z_j over the input set, [B, K] (+inf at j = y), given intermediate bounds."""
    if norm not in ("inf", "2"):
        raise CNodeError(f"norm must be 'inf' or '2', got {norm!r}")
    B = u.shape[0]
    rows, offs = margin_specs(net, labels)
    K = rows.shape[1]
    others = _other_classes(labels, K)  # the j = y row is identically zero: skip it
    rows = rows.gather(1, others[:, :, None].expand(-1, -1, rows.shape[2]))
    const = offs.gather(1, others)
    lam = rows.view(B, K - 1, *bounds.lo.shape[1:])
    for k in range(len(net.steps) - 1, -1, -1):
        back, c = _through(net.steps[k], lam, net.h, bounds.pre[k + 1], net)
        lam, const = lam + back, const + c
    lam, c = _through(net.embed, lam, 1.0, bounds.pre[0], net)
    const = const + c
    flat = lam.flatten(2)
    mid = (0.5 * (bounds.input_lo + bounds.input_hi)).flatten(1)[:, None]
    rad = (0.5 * (bounds.input_hi - bounds.input_lo)).flatten(1)[:, None]
    low = const + (flat * mid).sum(2) - (flat.abs() * rad).sum(2)
    if norm == "2":
        e = torch.as_tensor(eps, dtype=u.dtype, device=u.device).expand(B)[:, None]
        low = torch.maximum(low, const + (flat * u.flatten(1)[:, None]).sum(2) - e * flat.norm(dim=2))
    out = torch.full((B, K), torch.inf, dtype=low.dtype, device=low.device)
    return out.scatter(1, others, low)


def crown_margins(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Lower bounds of z_y - z_j over the input set: the larger of the CROWN-IBP and the local-box bound."""
    from certify.local import box_margins

    bounds = local_bounds(net, u, eps, norm)
    return torch.maximum(backward_margins(net, bounds, u, labels, eps, norm), box_margins(net, labels, bounds.lo, bounds.hi))
