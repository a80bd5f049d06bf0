"""Local bounds over an input set: boxes of every pre-activation and state, with local slopes.

Input set: the eps-ball around u (Linf or L2) intersected with the pixel box [0, 1]. Two enclosures are carried
through each Euler step and intersected:
- interval (IBP): z in T x_mid + b +- |T| x_rad, x+ in [lo + h sigma(z_lo), hi + h sigma(z_hi)] (sigma increasing);
- mean value around a centre trajectory x_c (run from an input inside the set): with the local slopes
  d_i in [dl_i, du_i] = range of sigma' on the neuron's pre-activation interval,
  |dx+_i| <= max_{d in {dl_i, du_i}} |1 + h d c_i| r_i + h d (|T| r - |c| r)_i   (c: the centre tap),
  the Euler step's local row-sum gain, which keeps the correlation between x and sigma(T x) that IBP loses.
The final box gives a lower bound of every margin z_y - z_j over the set (`local_margins`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contraction.errors import CNodeError
from certify.attacks import per_input_eps
from certify.unrolled import Unrolled

__all__ = ["LocalBounds", "input_box", "local_bounds", "margin_specs", "box_margins", "local_margins"]


@dataclass(frozen=True)
class LocalBounds:
    """Sound boxes over the input set: pre[k] = (lo, hi) of z_k (0: embedding, k: step k), final state box."""

    pre: list[tuple[torch.Tensor, torch.Tensor]]
    lo: torch.Tensor
    hi: torch.Tensor
    input_lo: torch.Tensor
    input_hi: torch.Tensor


def input_box(u: torch.Tensor, eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The box [u - eps, u + eps] intersected with [0, 1]: contains the Linf and the L2 ball (clipped)."""
    e = per_input_eps(eps, u)
    return (u - e).clamp(0.0, 1.0), (u + e).clamp(0.0, 1.0)


def _meet(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])
    return lo, torch.maximum(hi, lo)  # both contain the set; equal-width guard against round-off crossings


def local_bounds(net: Unrolled, u: torch.Tensor, eps: float | torch.Tensor, norm: str, *,
                 interval: bool = True) -> LocalBounds:
    """Boxes of every layer over {u' in [0,1]^n : ||u' - u|| <= eps} (per-input eps allowed).

    `interval=False` skips the IBP enclosure inside the steps (mean value only: cheaper, for training)."""
    if norm not in ("inf", "2"):
        raise CNodeError(f"norm must be 'inf' or '2', got {norm!r}")
    lo_u, hi_u = input_box(u, eps)
    mid, rad = 0.5 * (lo_u + hi_u), 0.5 * (hi_u - lo_u)
    # centre input inside the set: the box midpoint for Linf (the set is the box), u itself for L2
    uc = mid if norm == "inf" else u
    z = net.embed(mid)
    zr = net.embed.abs(rad)
    pre0 = (z - zr, z + zr)
    if norm == "2":
        rows = net.embed.weight.flatten(1).norm(dim=1)[:, None, None]  # ||row||_2 per output channel
        zu, e = net.embed(u), per_input_eps(eps, u)
        pre0 = _meet(pre0, (zu - e * rows, zu + e * rows))
    pre = [pre0]
    act, h = net.act, net.h
    xc = act(net.embed(uc))
    lo, hi = act(pre0[0]), act(pre0[1])
    for layer in net.steps:
        r = torch.maximum(xc - lo, hi - xc).clamp_min(0.0)
        zc = layer(xc)
        abs_r = layer.abs(r)
        zl, zh = zc - abs_r, zc + abs_r
        if interval:
            zm, zmr = layer(0.5 * (lo + hi)), layer.abs(0.5 * (hi - lo))
            zl, zh = _meet((zl, zh), (zm - zmr, zm + zmr))
        pre.append((zl, zh))
        dl, du = act.slope_range(zl, zh)
        c = layer.centre()
        off = (abs_r - c.abs() * r).clamp_min(0.0)
        gain = torch.maximum((1 + h * dl * c).abs() * r + h * dl * off, (1 + h * du * c).abs() * r + h * du * off)
        xc = xc + h * act(zc)
        lo, hi = (xc - gain, xc + gain) if not interval else \
            _meet((xc - gain, xc + gain), (lo + h * act(zl), hi + h * act(zh)))
    return LocalBounds(pre, lo, hi, lo_u, hi_u)


def margin_specs(net: Unrolled, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows w_y - w_j [B, K, n] and offsets c_y - c_j [B, K] of every margin z_y - z_j (j = y gives zeros)."""
    W, c = net.readout_weight, net.readout_bias
    return W[labels][:, None, :] - W[None, :, :], c[labels][:, None] - c[None, :]


def box_margins(net: Unrolled, labels: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """min over the final-state box of z_y - z_j, [B, K] (+inf at j = y)."""
    rows, offs = margin_specs(net, labels)
    mid, rad = 0.5 * (lo + hi).flatten(1), 0.5 * (hi - lo).flatten(1)
    m = torch.einsum("bkn,bn->bk", rows, mid) - torch.einsum("bkn,bn->bk", rows.abs(), rad) + offs
    return m.masked_fill(torch.nn.functional.one_hot(labels, m.shape[1]).bool(), torch.inf)


def local_margins(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Lower bounds of z_y - z_j over the input set from the local boxes, [B, K] (+inf at j = y)."""
    b = local_bounds(net, u, eps, norm)
    return box_margins(net, labels, b.lo, b.hi)
