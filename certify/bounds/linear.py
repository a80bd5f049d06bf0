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

from typing import Iterator

import torch

from contraction.errors import check_norm
from certify.bounds.attacks import per_input_eps
from certify.bounds.layers import Affine, Concretize, Pre, Symbolic, meet
from certify.bounds.local import LayerBounds, local_bounds
from certify.bounds.unrolled import Unrolled

__all__ = ["DEFAULT_BUDGET", "ROWS", "symbolic_range", "remember", "symbolic_layers", "linear_bounds"]

DEFAULT_BUDGET = 2**26  # coefficients of A held at once (512 MiB in float64), chunking the inputs


ROWS = 256  # rows of A concretised at a time: |A| of a block stays in cache (the whole |A| would be a copy of A)


def symbolic_range(s: Symbolic, lo_u: torch.Tensor, hi_u: torch.Tensor, u: torch.Tensor, eps: torch.Tensor | None,
                   *, rows: int = ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact range of A u + c +- r over u in the box [lo_u, hi_u] (and, if `eps` [B] is given, also over the L2
    ball ||u' - u|| <= eps: the intersection of both ranges encloses the set ball & box). A linear part shared by
    every input (stride 0 over the batch, as `symbolic_layers` leaves the first affine layer's) is read once; any
    other is read `rows` rows at a time."""
    A = s.A.flatten(0, -3).transpose(0, 1)  # [B, m, n]
    mid, rad = (0.5 * (lo_u + hi_u)).flatten(1), (0.5 * (hi_u - lo_u)).flatten(1)
    if A.stride(0) == 0:  # one matrix for every input: matrix products over the inputs' vectors
        A1 = A[0]
        centre = (A1 @ mid.T).T
        width = (A1.abs() @ rad.T).T
    else:
        B, m = A.shape[:2]
        centre = torch.empty(B, m, dtype=A.dtype, device=A.device)
        width = torch.empty_like(centre)
        for i in range(0, m, rows):
            block = A[:, i:i + rows]
            centre[:, i:i + rows] = torch.bmm(block, mid.unsqueeze(-1)).squeeze(-1)
            width[:, i:i + rows] = torch.bmm(block.abs(), rad.unsqueeze(-1)).squeeze(-1)
    shape = s.c.shape
    c, r = s.c.flatten(1), s.r.flatten(1)
    lo, hi = c + centre - width - r, c + centre + width + r
    if eps is not None:
        at_u = c + torch.bmm(A, u.flatten(1).unsqueeze(-1)).squeeze(-1)
        ball = eps.reshape(-1, 1) * A.norm(dim=-1) + r
        lo, hi = meet((lo, hi), (at_u - ball, at_u + ball))
    return lo.reshape(shape), hi.reshape(shape)


def remember(concretize: Concretize) -> Concretize:
    """`concretize` that returns the range it took last when asked again for the same linear form (the form a layer
    returned, its output box, is also the next rule's pre-activation form)."""
    last: list = [None, None]

    def once(form: Symbolic) -> tuple[torch.Tensor, torch.Tensor]:
        if last[0] is not form:
            last[0], last[1] = form, concretize(form)
        return last[1]
    return once


def symbolic_layers(net: Unrolled, u: torch.Tensor, local: LayerBounds, concretize: Concretize, stop: int | None = None
                    ) -> Iterator[tuple[int, Symbolic, Pre]]:
    """Each layer's output as a linear form of the input, x = A u + c +- r (`Layer.symbolic` from the identity),
    with the pre-activation box each rule used, for layers 0 .. `stop` - 1 (all but the last by default).

    An affine first layer maps the identity to the same linear part for every input: it is computed for one and
    shared (stride 0 over the batch) until a later rule scales it per input."""
    B, n = u.shape[0], u[0].numel()
    layers = net.layers[:-1] if stop is None else net.layers[:stop]
    eye = torch.eye(n, dtype=u.dtype, device=u.device).reshape(*u.shape[1:], 1, n)
    first = 0
    if layers and isinstance(layers[0], Affine):
        zero = torch.zeros_like(u[:1])
        one, _ = layers[0].symbolic(Symbolic(eye, zero, zero), None, concretize)
        s = Symbolic(one.A.expand(*one.A.shape[:-2], B, n), one.c.expand(B, *one.c.shape[1:]),
                     one.r.expand(B, *one.r.shape[1:]))
        first = 1
        yield 0, s, None
    else:  # every input's own copy of the identity (the first rule scales it per input)
        s = Symbolic(eye.expand(*u.shape[1:], B, n).contiguous(), torch.zeros_like(u), torch.zeros_like(u))
    for i in range(first, len(layers)):
        s, p = layers[i].symbolic(s, local.pre[i], concretize)
        yield i, s, p


def _linear_chunk(net: Unrolled, u: torch.Tensor, eps: torch.Tensor, norm: str, local: LayerBounds) -> LayerBounds:
    lo_u, hi_u = local.input_lo, local.input_hi
    ball = eps.flatten() if norm == "2" else None
    concretize = remember(lambda s: symbolic_range(s, lo_u, hi_u, u, ball))
    pre, boxes = [], []
    for i, s, p in symbolic_layers(net, u, local, concretize):
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
