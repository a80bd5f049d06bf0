"""Linear intermediate bounds: every layer's output and pre-activation bounded by linear functions of the input.

Forward linear relaxation (symbolic intervals with a shared linear part): each layer's input is enclosed as
x = A u + c + r * delta over the input set (A [*shape, B, n]: a column per input coordinate, |delta| <= 1), carried
forward by each layer's `symbolic` rule (certify.bounds.layers): affine layers map A exactly; sigma and the Euler steps use
the parallel-line relaxation k z + mid +- half of the pre-activation's interval, so the linear part stays exact
(A picks up (I + h diag(k) T) per Euler step) and only the relaxation's half-width enters the error r. Each
pre-activation's interval is the symbolic range over the input set (concretised exactly: the box for Linf, and
for L2 also the ball, A u0 +- eps ||A_i||) met with the local box of certify.bounds.local, and so is every layer's
output box (the magnitudes the float32 error terms scale with, certify.bounds.roundoff): never looser than the
local boxes. Where the interval and mean-value boxes lose the correlation between layers (ordinarily trained
models, whose Euler steps amplify a box by up to 1e7), the linear part keeps it: the error r carries only the
relaxations' half-widths (second order in the interval's width for a smooth sigma).

Cost: one pass of the network on n x B generator columns (conv layers as convs of the coefficient batch, never a
dense matrix), so the inputs are processed in chunks holding at most `budget` coefficients each."""

from __future__ import annotations

import torch

from contraction.errors import check_norm
from certify.bounds.attacks import per_input_eps
from certify.bounds.layers import Symbolic, meet
from certify.bounds.local import LayerBounds, local_bounds
from certify.bounds.unrolled import Unrolled

__all__ = ["DEFAULT_BUDGET", "symbolic_range", "linear_bounds"]

DEFAULT_BUDGET = 2**26  # coefficients of A held at once (512 MiB in float64), chunking the inputs


def symbolic_range(s: Symbolic, lo_u: torch.Tensor, hi_u: torch.Tensor, u: torch.Tensor, eps: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact range of A u + c +- r over u in the box [lo_u, hi_u] (and, if `eps` [B] is given, also over the L2
    ball ||u' - u|| <= eps: the intersection of both ranges encloses the set ball & box)."""
    A = s.A.flatten(0, -3).transpose(0, 1)  # [B, m, n]
    mid, rad = (0.5 * (lo_u + hi_u)).flatten(1), (0.5 * (hi_u - lo_u)).flatten(1)
    centre = torch.bmm(A, mid.unsqueeze(-1)).squeeze(-1)
    width = torch.bmm(A.abs(), rad.unsqueeze(-1)).squeeze(-1)
    shape = s.c.shape
    c, r = s.c.flatten(1), s.r.flatten(1)
    lo, hi = c + centre - width - r, c + centre + width + r
    if eps is not None:
        at_u = c + torch.bmm(A, u.flatten(1).unsqueeze(-1)).squeeze(-1)
        ball = eps.reshape(-1, 1) * A.norm(dim=-1) + r
        lo, hi = meet((lo, hi), (at_u - ball, at_u + ball))
    return lo.reshape(shape), hi.reshape(shape)


def _linear_chunk(net: Unrolled, u: torch.Tensor, eps: torch.Tensor, norm: str, local: LayerBounds) -> LayerBounds:
    lo_u, hi_u = local.input_lo, local.input_hi
    ball = eps.flatten() if norm == "2" else None

    def concretize(s: Symbolic) -> tuple[torch.Tensor, torch.Tensor]:
        return symbolic_range(s, lo_u, hi_u, u, ball)

    B, n = u.shape[0], u[0].numel()
    eye = torch.eye(n, dtype=u.dtype, device=u.device).reshape(*u.shape[1:], 1, n).expand(*u.shape[1:], B, n).contiguous()
    s = Symbolic(eye, torch.zeros_like(u), torch.zeros_like(u))
    pre, boxes = [], []
    for i, layer in enumerate(net.layers[:-1]):
        s, p = layer.symbolic(s, local.pre[i], concretize)
        pre.append(p)
        boxes.append(meet(concretize(s), local.boxes[i]))
    return LayerBounds(boxes, pre, lo_u, hi_u)


def _widest(net: Unrolled, u: torch.Tensor) -> int:
    """The largest number of values of one input's layer output (the generator columns' size)."""
    sizes, x = [u[:1].numel()], u[:1]
    for layer in net.layers[:-1]:
        x = layer(x)
        sizes.append(x.numel())
    return max(sizes)


def linear_bounds(net: Unrolled, u: torch.Tensor, eps: float | torch.Tensor, norm: str, *,
                  local: LayerBounds | None = None, budget: int = DEFAULT_BUDGET) -> LayerBounds:
    """Boxes of every layer (and pre-activation) over {u' in [0,1]^n : ||u' - u|| <= eps} from linear bounds,
    met with the local boxes (`local`, computed here when not given): every box is at least as tight as theirs.

    Inputs go through in chunks of at most `budget` coefficients (n x layer size per input; at least one input)."""
    check_norm(norm)
    e = per_input_eps(eps, u)
    if local is None:
        local = local_bounds(net, u, e.flatten(), norm)
    step = max(1, budget // (u[0].numel() * _widest(net, u)))
    parts = []
    for i in range(0, u.shape[0], step):
        sl = slice(i, i + step)
        sub = LayerBounds([(lo[sl], hi[sl]) for lo, hi in local.boxes],
                          [None if p is None else (p[0][sl], p[1][sl]) for p in local.pre],
                          local.input_lo[sl], local.input_hi[sl])
        parts.append(_linear_chunk(net, u[sl], e[sl], norm, sub))
    if len(parts) == 1:
        return parts[0]
    cat = lambda pairs: (torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))  # noqa: E731
    return LayerBounds([cat([p.boxes[k] for p in parts]) for k in range(len(local.boxes))],
                       [None if local.pre[k] is None else cat([p.pre[k] for p in parts])
                        for k in range(len(local.pre))],
                       local.input_lo, local.input_hi)
