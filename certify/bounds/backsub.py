"""Back-substituted intermediate bounds (CROWN's intermediate step) on the layer engine.

The forward stages bound every pre-activation through boxes (certify.bounds.local) or forward linear forms
(certify.bounds.linear), whose error terms are carried through |I + h diag(k) T| step after step. Here each
pre-activation neuron z_j of a sigma layer or of an Euler-type step (z = T x + b) is bounded instead by a backward
pass: the linear functional +-e_j on z, carried back to the network's input through every earlier layer's `backward`
rule (each layer's relaxation on its own pre-activation box, refined first, layer by layer from the input), and
minimised exactly over the input set (certify.bounds.crown.input_minimum). The new box is met with the given one, so
it is never looser. Only neurons whose relaxation has a gap (upper - lower > 0 on the current box) are recomputed:
a leaky ReLU neuron of fixed sign is already exact. Rows (input, neuron, sign) go through in chunks of at most
`budget` coefficients. The pre-activation boxes of Runge-Kutta steps (one per stage) are kept as given."""

from __future__ import annotations

import math

import torch

from certify.bounds.crown import input_minimum
from certify.bounds.layers import Act, FieldStep, Pre, meet
from certify.bounds.linear import DEFAULT_BUDGET
from certify.bounds.local import LayerBounds
from certify.bounds.relax import relax
from certify.bounds.unrolled import Unrolled

__all__ = ["backsub_bounds"]


def _open_neurons(act, pre: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[B, N] bool: the neurons whose relaxation on their box is not exact."""
    r = relax(act, pre[0], pre[1])
    return (r.upper - r.lower).flatten(1) > 0


def _refine(net: Unrolled, k: int, pre: list[Pre], bounds: LayerBounds, u: torch.Tensor,
            eps: float | torch.Tensor, norm: str, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """New (lo, hi) of layer k's pre-activation box by back-substitution (only the open neurons; the others keep
    their box)."""
    layer = net.layers[k]
    lo, hi = pre[k]  # type: ignore[misc]
    shape = lo.shape[1:]
    n = math.prod(shape)
    b_idx, j_idx = _open_neurons(net.act, (lo, hi)).nonzero(as_tuple=True)
    new_lo, new_hi = lo.flatten(1).clone(), hi.flatten(1).clone()
    widest = max(math.prod(bounds.input_lo.shape[1:]), *(math.prod(b[0].shape[1:]) for b in bounds.boxes[:k + 1]))
    chunk = max(1, budget // (2 * widest))
    for start in range(0, len(b_idx), chunk):
        rows, cols = b_idx[start:start + chunk], j_idx[start:start + chunk]
        R = len(rows)
        e = torch.zeros(R, n, dtype=lo.dtype, device=lo.device)
        e[torch.arange(R, device=lo.device), cols] = 1.0
        lam = torch.cat([e, -e]).view(2 * R, *shape)
        both = torch.cat([rows, rows])
        const = torch.zeros(2 * R, dtype=lo.dtype, device=lo.device)
        if isinstance(layer, FieldStep):  # z = T x + b: to the step's input
            lam, const = layer.conv.backward(lam, const, None, both)
        for i in range(k - 1, -1, -1):
            lam, const = net.layers[i].backward(lam, const, pre[i], both)
        low = input_minimum(lam, const, bounds, u, eps, norm, both)
        new_lo[rows, cols] = torch.maximum(new_lo[rows, cols], low[:R])
        new_hi[rows, cols] = torch.minimum(new_hi[rows, cols], -low[R:])
    new_hi = torch.maximum(new_hi, new_lo)
    return new_lo.view_as(lo), new_hi.view_as(hi)


def backsub_bounds(net: Unrolled, u: torch.Tensor, eps: float | torch.Tensor, norm: str, bounds: LayerBounds, *,
                   budget: int = DEFAULT_BUDGET) -> LayerBounds:
    """`bounds` (boxes over the input set) with the pre-activation box of every sigma layer and Euler-type step
    recomputed by back-substitution and met with its own, first layer first (module docstring)."""
    pre: list[Pre] = list(bounds.pre)
    for k, layer in enumerate(net.layers[:-1]):
        if pre[k] is None or not isinstance(layer, (Act, FieldStep)):
            continue
        pre[k] = meet(pre[k], _refine(net, k, pre, bounds, u, eps, norm, budget))  # type: ignore[arg-type]
    return LayerBounds(bounds.boxes, pre, bounds.input_lo, bounds.input_hi, bounds.balls)
