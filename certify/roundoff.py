"""The float32 error of the network as it runs, derived over the whole input set (METHOD.md section 12).

The bound engine works on the real-arithmetic twin of the network (certify.unrolled: float64 copies of the float32
weights and constants). The network that answers is the float32 one. For every input u' of the set (the eps-ball
intersected with [0, 1]) each layer's `roundoff` rule (certify.layers) bounds |fl32 output - exact output| from the
error of its input and the magnitudes of the exact values over the set (the engine's own boxes): affine layers by
gamma_n (|A| |x| + |b|) for any summation order, sigma by its slope and its float32 evaluation error, each Euler step by
its mean-value gain |I + h D T| on the incoming error plus its conv's, sigma's, multiply's and add's own errors and the
float32 grid's step h_run - h. The result bounds every logit's error E_k over the set; a margin's slack is
E_y + E_j (the prediction is the argmax of the float32 logits, compared exactly).

The float64 engine's own rounding is not rounded outward; ENGINE_MARGIN widens every slack to cover it (about 2^-29
of the float32 terms where the engine's arithmetic mirrors the network's; not a proof)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from contraction.floats import TINY

if TYPE_CHECKING:
    from certify.local import LocalBounds
    from certify.unrolled import Unrolled

__all__ = ["ENGINE_MARGIN", "float32_error", "margin_slack", "ERROR_MODEL"]

ENGINE_MARGIN = 2.0**-10
"""Relative widening of every derived slack for the float64 engine's own rounding."""

ERROR_MODEL = ("derived: each margin must exceed E_y + E_j, E_k a proven bound of |float32 logit - exact logit| over the "
               "input set (gamma_n sums in any order, correctly rounded +-*/, exp/log1p/tanh within 4 ulps, direct or "
               "GEMM convolutions; METHOD.md section 12)")


def float32_error(net: "Unrolled", bounds: "LocalBounds") -> torch.Tensor:
    """[B, K] bounds of |fl32(z_k)(u') - z_k(u')| for every input u' of the set `bounds` was computed on (its boxes of
    every layer's exact output and pre-activation), the network evaluated in float32 as it runs."""
    lo, hi = bounds.input_lo, bounds.input_hi
    err = torch.zeros_like(lo)
    last = len(net.layers) - 1
    for i, layer in enumerate(net.layers):
        err = layer.roundoff(lo, hi, bounds.pre[i] if i < last else None, err)
        if i < last:
            lo, hi = bounds.boxes[i]
    return err


def margin_slack(err: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, K] slack of every margin z_y - z_j: (E_y + E_j)(1 + ENGINE_MARGIN) + TINY (0 at j = y; non-finite where
    the error bound is: such a margin stays open)."""
    e = err.to(torch.float64)
    s = (e.gather(1, labels[:, None]) + e) * (1 + ENGINE_MARGIN) + TINY
    return s.masked_fill(F.one_hot(labels, e.shape[1]).bool(), 0.0)
