"""The float32 error of the network as it runs, derived over the whole input set (docs/METHOD.md section 12).

The bound engine works on the real-arithmetic twin of the network (certify.bounds.unrolled: float64 copies of the float32
weights and constants). The network that answers is the float32 one. For every input u' of the set (the eps-ball
intersected with [0, 1]) each layer's `roundoff` rule (certify.bounds.layers) bounds |fl32 output - exact output| from the
error of its input and the magnitudes of the exact values over the set (the engine's own boxes): affine layers by
gamma_n (|A| |x| + |b|) for any summation order, sigma by its slope and its float32 evaluation error, each Euler step by
its mean-value gain |I + h D T| on the incoming error plus its conv's, sigma's, multiply's and add's own errors and the
float32 grid's step h_run - h. The result bounds every logit's error E_k over the set; a margin's slack is
E_y + E_j (the prediction is the argmax of the float32 logits, compared exactly).

The float64 engine's own rounding is not rounded outward; ENGINE_MARGIN widens every slack to cover it (about 2^-29
of the float32 terms where the engine's arithmetic mirrors the network's; not a proof)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from certify.bounds.layers import Affine
from contraction.floats import TINY

if TYPE_CHECKING:
    from certify.bounds.local import LayerBounds
    from certify.bounds.unrolled import Unrolled

__all__ = ["ENGINE_MARGIN", "float32_error", "float32_errors", "ball_error", "hull_error", "margin_slack", "ERROR_MODEL",
           "lipschitz_met", "Float32Terms", "float32_terms", "ball_terms"]

ENGINE_MARGIN = 2.0**-10
"""Relative widening of every derived slack for the float64 engine's own rounding."""

ERROR_MODEL = ("derived: each margin must exceed E_y + E_j, E_k a proven bound of |float32 logit - exact logit| over the "
               "input set (gamma_n sums in any order, correctly rounded +-*/, exp/log1p/tanh within 4 ulps, direct or "
               "GEMM convolutions; docs/METHOD.md section 12)")


def lipschitz_met(net: "Unrolled", u: torch.Tensor, eps: float | torch.Tensor, norm: str,
                  bounds: "LayerBounds") -> "LayerBounds":
    """The boxes of `bounds` met with the Lipschitz balls around the centre input u: every coordinate of layer k's
    output lies within L_k eps of its value at u (L_k the product of the layers' factors in `norm`, a coordinate being
    at most any p-norm), and a step's pre-activation within its `pre_lipschitz` times L_{k-1} eps. Over large L2 balls the
    mean-value boxes cover the whole pixel box; this keeps the magnitudes the float32 error is proportional to.
    In L2 the balls themselves (centre, L_{k-1} eps) are kept for the magnitudes of the affine layers and of the steps'
    convolutions (`Layer.roundoff`'s ball).

    A ball at least as wide as its box everywhere leaves the box as it is (the box holds the centre's value): the
    network is evaluated at u only where some ball is narrower (Linf balls of expansive blocks rarely are)."""
    from certify.bounds.attacks import per_input_eps
    from certify.bounds.local import LayerBounds

    e = per_input_eps(eps, u).flatten()
    outs: list[torch.Tensor] | None = None
    pres: dict[int, torch.Tensor] = {}

    def met(box: tuple[torch.Tensor, torch.Tensor], centre: Callable[[], torch.Tensor],
            factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal outs, pres
        radius = factor * e
        if bool((radius.min() >= (box[1] - box[0]).max())):
            return box
        if outs is None:
            outs = net.outputs(u)
            pres = net.preactivations(u, outs)
        c = centre()
        r = radius.view(-1, *[1] * (c.dim() - 1))
        lo, hi = torch.maximum(box[0], c - r), torch.minimum(box[1], c + r)
        return lo, torch.maximum(hi, lo)

    if norm == "2":
        outs = net.outputs(u)
        pres = net.preactivations(u, outs)
    lip = torch.ones((), dtype=u.dtype, device=u.device)
    boxes, pre, balls = [], [], []
    for i, layer in enumerate(net.layers):
        if outs is not None and norm == "2":
            balls.append((outs[i], lip * e))  # layer i's input lies within L_{i-1} eps of its value at u
        if i == len(net.layers) - 1:
            break
        p = bounds.pre[i]
        if p is not None and layer.nonlinear:
            p = met(p, lambda i=i: pres[i], lip * net.factor(i, norm, pre=True).to(u.dtype))
        lip = lip * net.factor(i, norm).to(u.dtype)
        boxes.append(met(bounds.boxes[i], lambda i=i: outs[i + 1], lip))  # type: ignore[index]
        pre.append(p)
    return LayerBounds(boxes, pre, bounds.input_lo, bounds.input_hi, balls if norm == "2" else None)


def float32_error(net: "Unrolled", bounds: "LayerBounds") -> torch.Tensor:
    """The logits' float32 error bounds (`float32_errors`' last)."""
    return float32_errors(net, bounds)[-1]


def float32_errors(net: "Unrolled", bounds: "LayerBounds") -> list[torch.Tensor]:
    """(`_propagate`'s errors.)"""
    return _propagate(net, bounds)[0]


def _propagate(net: "Unrolled", bounds: "LayerBounds") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Bounds of |fl32(x_i)(u') - x_i(u')| of every layer i's output (the last: the logits, [B, K]) for every input u'
    of the set `bounds` was computed on (its boxes of every layer's exact output and pre-activation), the network
    evaluated in float32 as it runs.

    Two bounds of the error vector d_k after layer k, the smaller kept coordinate by coordinate: elementwise (each
    layer's `roundoff` rule: its own error plus the incoming one through |layer|), and in norm, for the Linf and the L2
    norm: ||d_k|| <= Lip_k ||d_{k-1}|| + ||own_k||, Lip_k the layer's proven factor (the exact layer maps x and x^ at
    most that far apart) and own_k its own float32 error (`roundoff`'s first part), a coordinate being at most the
    norm. The norm bound keeps what |.| loses where a layer contracts in norm but not row by row (the gradient field's
    steps: row sums of |I - h T^T D T| near 4, L2 norm <= 1).

    Returns the errors and each layer's own error (at inputs within the incoming error of its box)."""
    lo, hi = bounds.input_lo, bounds.input_hi
    err = torch.zeros_like(lo)
    errors, owns = [], []
    norms = {n: torch.zeros(lo.shape[0], dtype=lo.dtype, device=lo.device) for n in ("inf", "2")}
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        pre = bounds.pre[i] if i < last else None
        # L2 balls: the magnitudes by Cauchy-Schwarz too (affine layers and the steps' convolutions)
        own, out = layer.roundoff(lo, hi, pre, err, None if bounds.balls is None else bounds.balls[i])
        owns.append(own)
        own = own.flatten(1)
        flat = out.flatten(1)
        if isinstance(layer, Affine) and layer.terms > 0:  # row by row: |(A e)_k| <= ||A_k||_2 ||e||_2 (+ own)
            rows = layer.row_norms().to(lo.dtype).expand(out.shape[1:]).flatten()
            flat = torch.minimum(flat, rows * norms["2"][:, None] + own)
        for n in norms:
            size = own.amax(1) if n == "inf" else own.norm(dim=1)
            norms[n] = net.factor(i, n).to(lo.dtype) * norms[n] + size
            flat = torch.minimum(flat, norms[n][:, None])
        err = flat.view_as(out)
        errors.append(err)
        if i < last:
            lo, hi = bounds.boxes[i]
    return errors, owns


@dataclass(frozen=True)
class Float32Terms:
    """The float32 network as the exact one with an error added after every layer: `own[i]` bounds what layer i adds
    (|fl32 layer(x^) - layer(x^)| at its float32 input x^, of its output's shape), `pre[i]` how far the pre-activation
    of a float32 state of nonlinear layer i may lie outside the exact pre-activation box (None: affine), `errors[i]`
    the accumulated |x^_i - x_i| (`float32_errors`). A backward pass that widens each relaxation's box by `pre` and
    subtracts |lambda_i| . own[i] at every layer bounds the float32 margin itself (certify.bounds.crown): the errors
    weighed by the functional that reaches them, with its signs, instead of carried forward through |layer|."""

    own: list[torch.Tensor]
    pre: list[torch.Tensor | None]
    errors: list[torch.Tensor]

    def select(self, rows: torch.Tensor) -> "Float32Terms":
        """The terms of the inputs `rows` (an index or boolean mask over the batch)."""
        return Float32Terms([o[rows] for o in self.own], [None if p is None else p[rows] for p in self.pre],
                            [e[rows] for e in self.errors])


def float32_terms(net: "Unrolled", bounds: "LayerBounds") -> Float32Terms | None:
    """`Float32Terms` over the set `bounds` was computed on; None where a layer has no `pre_error` rule (Runge-Kutta
    steps: their stage boxes are the stages' own)."""
    errors, owns = _propagate(net, bounds)
    pre: list[torch.Tensor | None] = []
    for i, layer in enumerate(net.layers[:-1]):
        if bounds.pre[i] is None:
            pre.append(None)
            continue
        moved = layer.pre_error(errors[i - 1] if i else torch.zeros_like(bounds.input_lo))
        if moved is None:
            return None
        pre.append(moved)
    return Float32Terms(owns, pre, errors)


def ball_terms(net: "Unrolled", u: torch.Tensor, eps: float | torch.Tensor, norm: str,
               bounds: "LayerBounds") -> Float32Terms | None:
    """`float32_terms` over the ball of radius eps around u, the boxes first met with the Lipschitz balls."""
    return float32_terms(net, lipschitz_met(net, u, eps, norm, bounds))


def ball_error(net: "Unrolled", u: torch.Tensor, eps: float | torch.Tensor, norm: str,
               bounds: "LayerBounds") -> torch.Tensor:
    """`float32_error` over the ball of radius eps around u (`bounds`: boxes over it), the boxes first met with the
    Lipschitz balls (`lipschitz_met`)."""
    return float32_error(net, lipschitz_met(net, u, eps, norm, bounds))


def hull_error(net: "Unrolled", bounds: "LayerBounds") -> torch.Tensor:
    """[1, K]: one float32 error bound of the logits for every input of the batch: `float32_error` over the hull of
    its boxes (`LayerBounds.hull`), which holds every input's set. One pass instead of one per input; looser (the
    widest magnitudes and slope ranges of the batch), so a margin that clears it needs no bound of its own."""
    return float32_error(net, bounds.hull())


def margin_slack(err: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, K] slack of every margin z_y - z_j: (E_y + E_j)(1 + ENGINE_MARGIN) + TINY (0 at j = y; non-finite where
    the error bound is: such a margin stays open)."""
    e = err.to(torch.float64)
    s = (e.gather(1, labels[:, None]) + e) * (1 + ENGINE_MARGIN) + TINY
    return s.masked_fill(F.one_hot(labels, e.shape[1]).bool(), 0.0)
