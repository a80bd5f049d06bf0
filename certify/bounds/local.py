"""Local bounds over an input set: boxes of every layer's output and of every pre-activation, with local slopes.

Input set: the eps-ball around u (Linf or L2) intersected with the pixel box [0, 1]. Each layer's `bounds` rule
carries the box forward (certify.bounds.layers): affine layers give each output's exact range over the box; sigma is
increasing; an Euler step intersects interval arithmetic with a mean-value enclosure around a centre trajectory
(run from an input inside the set) using the local slope range of each neuron, which keeps the correlation
between x and sigma(T x) that interval arithmetic loses. In L2 the first affine layer's box is also intersected
with its exact range over the ball. The box of the last layer's input gives a lower bound of every margin
z_y - z_j over the set (`box_margins` of the boxes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contraction.errors import check_norm
from certify.bounds.attacks import per_input_eps
from certify.bounds.layers import Affine, Box, Pre, meet
from certify.bounds.unrolled import Unrolled

__all__ = ["LayerBounds", "input_box", "ibp_bounds", "local_bounds", "margin_specs", "box_margins"]


@dataclass(frozen=True)
class LayerBounds:
    """Sound boxes of every layer over the input set (what IBP, the mean-value boxes and the linear stage return):
    `boxes[i]` of layer i's output (all layers but the last), `pre[i]` of the pre-activation of nonlinear layer i
    (None for affine layers); (lo, hi) = the box of the last layer's input."""

    boxes: list[tuple[torch.Tensor, torch.Tensor]]
    pre: list[Pre]
    input_lo: torch.Tensor
    input_hi: torch.Tensor
    balls: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    """Optional L2 balls (centre, radius [B]) holding each layer's input (`certify.bounds.roundoff.lipschitz_met`)."""

    @property
    def lo(self) -> torch.Tensor:
        return self.boxes[-1][0]

    def select(self, rows: torch.Tensor) -> "LayerBounds":
        """The bounds of the inputs `rows` (an index or boolean mask over the batch)."""
        pick = lambda pair: None if pair is None else (pair[0][rows], pair[1][rows])  # noqa: E731
        return LayerBounds([pick(b) for b in self.boxes], [pick(p) for p in self.pre], self.input_lo[rows],
                           self.input_hi[rows], None if self.balls is None else [pick(b) for b in self.balls])

    @property
    def hi(self) -> torch.Tensor:
        return self.boxes[-1][1]

    def with_rows(self, rows: torch.Tensor, other: "LayerBounds") -> "LayerBounds":
        """These bounds with the rows `rows` (indices) replaced by `other`'s (bounds of those inputs, in that order;
        same layers). Each row stays sound for its own input; the L2 balls are dropped unless both carry them."""
        def put(mine: "tuple[torch.Tensor, torch.Tensor] | None", theirs: "tuple[torch.Tensor, torch.Tensor] | None"
                ) -> "tuple[torch.Tensor, torch.Tensor] | None":
            if mine is None or theirs is None:
                return None
            return mine[0].index_copy(0, rows, theirs[0]), mine[1].index_copy(0, rows, theirs[1])
        balls = None if self.balls is None or other.balls is None else \
            [put(a, b) for a, b in zip(self.balls, other.balls)]
        return LayerBounds([put(a, b) for a, b in zip(self.boxes, other.boxes)],  # type: ignore[misc]
                           [put(a, b) for a, b in zip(self.pre, other.pre)],
                           self.input_lo.index_copy(0, rows, other.input_lo),
                           self.input_hi.index_copy(0, rows, other.input_hi), balls)  # type: ignore[arg-type]

    def hull(self) -> "LayerBounds":
        """One set holding every input's: each box's coordinatewise hull over the batch (batch 1; no L2 balls)."""
        span = lambda pair: None if pair is None else (pair[0].amin(0, keepdim=True), pair[1].amax(0, keepdim=True))  # noqa: E731
        return LayerBounds([span(b) for b in self.boxes], [span(p) for p in self.pre],
                           self.input_lo.amin(0, keepdim=True), self.input_hi.amax(0, keepdim=True))


def input_box(u: torch.Tensor, eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The box [u - eps, u + eps] intersected with [0, 1]: contains the Linf and the L2 ball (clipped)."""
    e = per_input_eps(eps, u)
    return (u - e).clamp(0.0, 1.0), (u + e).clamp(0.0, 1.0)


def ibp_bounds(net: Unrolled, u: torch.Tensor, eps: float | torch.Tensor, norm: str) -> LayerBounds:
    """Interval bound propagation (each layer's `interval` rule) over the same input set as `local_bounds`: looser,
    about one forward pass per bound, and what IBP / CROWN-IBP training differentiate through. In L2 the first
    affine layer's box is intersected with its exact range over the ball, as in `local_bounds`."""
    check_norm(norm)
    lo_u, hi_u = input_box(u, eps)
    lo, hi = lo_u, hi_u
    boxes, pre = [], []
    for i, layer in enumerate(net.layers[:-1]):
        (lo, hi), p = layer.interval(lo, hi)
        if i == 0 and norm == "2" and isinstance(layer, Affine):
            lo, hi = meet((lo, hi), layer.ball_bounds(u, per_input_eps(eps, u).flatten()))
        boxes.append((lo, hi))
        pre.append(p)
    return LayerBounds(boxes, pre, lo_u, hi_u)


def local_bounds(net: Unrolled, u: torch.Tensor, eps: float | torch.Tensor, norm: str, *,
                 interval: bool = True) -> LayerBounds:
    """Boxes of every layer over {u' in [0,1]^n : ||u' - u|| <= eps} (per-input eps allowed).

    `interval=False` skips the interval enclosures (mean value only: cheaper, for training). With them, every box is
    also met with IBP's chain of boxes (`ibp_bounds`, carried alongside), so it is never looser than IBP's."""
    check_norm(norm)
    lo_u, hi_u = input_box(u, eps)
    # centre input inside the set: the box midpoint for Linf (the set is the box), u itself for L2
    box = Box(lo_u, hi_u, 0.5 * (lo_u + hi_u) if norm == "inf" else u)
    ibp = (lo_u, hi_u)
    same = True  # IBP's chain is still the boxes themselves (up to the first layer whose bounds are not its interval)
    boxes, pre = [], []
    for i, layer in enumerate(net.layers[:-1]):
        box, p = layer.bounds(box, interval)
        if i == 0 and norm == "2" and isinstance(layer, Affine):
            lo, hi = meet((box.lo, box.hi), layer.ball_bounds(u, per_input_eps(eps, u).flatten()))
            box = Box(lo, hi, box.centre)
        same = same and layer.bounds_are_interval
        if same:
            ibp = (box.lo, box.hi)
        elif interval:
            ibp, ibp_pre = layer.interval(*ibp)
            if i == 0 and norm == "2" and isinstance(layer, Affine):
                ibp = meet(ibp, layer.ball_bounds(u, per_input_eps(eps, u).flatten()))
            box = Box(*meet((box.lo, box.hi), ibp), box.centre)
            if p is not None and ibp_pre is not None:
                p = meet(p, ibp_pre)
        boxes.append((box.lo, box.hi))
        pre.append(p)
    return LayerBounds(boxes, pre, lo_u, hi_u)


def margin_specs(net: Unrolled, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows w_y - w_j [B, K, n] and offsets c_y - c_j [B, K] of every margin z_y - z_j (j = y gives zeros)."""
    W, c = net.readout_weight, net.readout_bias
    return W[labels][:, None, :] - W[None, :, :], c[labels][:, None] - c[None, :]


def box_margins(net: Unrolled, labels: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """min over the box of the last layer's input of z_y - z_j, [B, K] (+inf at j = y)."""
    rows, offs = margin_specs(net, labels)
    mid, rad = 0.5 * (lo + hi).flatten(1), 0.5 * (hi - lo).flatten(1)
    m = torch.einsum("bkn,bn->bk", rows, mid) - torch.einsum("bkn,bn->bk", rows.abs(), rad) + offs
    return m.masked_fill(torch.nn.functional.one_hot(labels, m.shape[1]).bool(), torch.inf)
