"""Tight certificates at a given eps: local boxes or CROWN-IBP margins, a decision per input, radii by bisection.

An input is certified at eps when every lower bound of z_y - z_j (j != y) over the closed eps-ball intersected with
[0, 1] exceeds the float32 round-off slack. Computed in float64 on an unrolled copy of the model."""

from __future__ import annotations

import torch

from contraction.errors import CNodeError
from certify.crown import box_and_crown_margins, crown_margins
from certify.local import local_margins
from certify.unrolled import Unrolled

__all__ = ["TIGHT_METHODS", "margin_lower_bounds", "certified_at", "local_and_crown", "tight_radii"]

TIGHT_METHODS = ("local", "crown")


def margin_lower_bounds(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor,
                        norm: str, method: str, slack: torch.Tensor | float = 0.0) -> torch.Tensor:
    """[B, K] lower bounds of z_y - z_j over the input set (+inf at j = y) by `method` ('local' or 'crown')."""
    u = u.to(net.readout_weight.dtype)
    if method == "local":
        return local_margins(net, u, labels, eps, norm)
    if method == "crown":
        return crown_margins(net, u, labels, eps, norm, slack)
    raise CNodeError(f"tight method must be one of {list(TIGHT_METHODS)}, got {method!r}")


def certified_at(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
                 method: str, slack: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Boolean [B]: every margin's lower bound over the eps-ball exceeds `slack`."""
    low = margin_lower_bounds(net, u, labels, eps, norm, method, slack).amin(1)
    return low > torch.as_tensor(slack, dtype=low.dtype)


def local_and_crown(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
                    slack: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] certified by the local boxes alone, [B] certified by crown), from one shared set of local bounds."""
    box, low = box_and_crown_margins(net, u.to(net.readout_weight.dtype), labels, eps, norm, slack)
    s = torch.as_tensor(slack, dtype=box.dtype).reshape(-1, 1)
    return (box > s).all(1), (low > s).all(1)


def tight_radii(net: Unrolled, u: torch.Tensor, labels: torch.Tensor, norm: str, method: str,
                slack: torch.Tensor | float, lo: torch.Tensor, hi: float, iters: int = 12) -> torch.Tensor:
    """Largest eps in [lo, hi] certified by `method`, by bisection per input (lo: radii already proven, e.g. global).

    The certified set only grows as eps shrinks, so the invariant 'certified at lo' holds throughout."""
    lo = lo.to(torch.float64).clone()
    up = torch.full_like(lo, hi)
    ok = certified_at(net, u, labels, up, norm, method, slack)
    lo = torch.where(ok, up, lo)
    for _ in range(iters):
        todo = ~ok & (up - lo > 1e-4 * up)
        if not bool(todo.any()):
            break
        mid = 0.5 * (lo + up)
        good = certified_at(net, u[todo], labels[todo], mid[todo], norm, method,
                            slack[todo] if isinstance(slack, torch.Tensor) and slack.dim() else slack)
        sub_lo, sub_up = lo[todo], up[todo]
        lo[todo] = torch.where(good, mid[todo], sub_lo)
        up[todo] = torch.where(good, sub_up, mid[todo])
    return lo
