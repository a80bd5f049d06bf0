"""Weight initialisations named by `TrainConfig.init`, and the config's full initialisation of a model."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from contraction.convops import centre_mask, conv_spectral_norm, with_centre_taps
from contraction.regularizers import contractive_centre_taps
from contraction.weights import euler_factor_2, euler_factor_inf, step_rate_limit
from nodes.aol import raw_weight
from nodes.classifier import ConvNODE
from nodes.config import TrainConfig
from nodes.regularize import negative_diagonal_init_

__all__ = ["INITIALISERS", "ibp_init_", "contractive_init_", "initialise_"]


@torch.no_grad()
def ibp_init_(model: nn.Module) -> nn.Module:
    """Interval-preserving initialisation (Shi et al. 2021): every conv / linear weight ~ N(0, (sqrt(2 pi) / n_in)^2)
    with n_in its fan-in, biases 0, so that an input box's expected width is kept layer by layer at the start."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            raw_weight(module).normal_(0.0, math.sqrt(2 * math.pi) / module.weight[0].numel())
            if module.bias is not None:
                module.bias.zero_()
    return model


@torch.no_grad()
def contractive_init_(model: ConvNODE, config: TrainConfig, *, margin: float = 0.2) -> ConvNODE:
    """PyTorch's initialisation, then each block conv set so that the weight hinge of `config.reg_norm` and
    `config.reg_target` holds with room from the first step: the model starts certified at the target the
    regularizer then keeps (Adam moves a weight by about lr per step, too little to dig the centre taps from about 0
    to the rate's within an epoch).

    'flow': the centre taps at `contraction.regularizers.contractive_centre_taps` for rate (1 + margin) rho + margin.
    'step' (every Euler step as run): rate r = min((1 + margin) rho + margin, the midpoint between rho and the
    step's limit `step_rate_limit`); the centre taps at the best value for the norm (inf: midway in
    [-1 / (h b), -(R_i + r / a)]; 2: -a / (h b^2)) and the off-centre taps scaled by the largest factor in [0, 1]
    (bisection on the certificate's own bound) that keeps the step's factor <= 1 - h r."""
    act, cfg = model.activation, model.config
    if config.reg_target == "flow":
        r = (1 + margin) * config.rho + margin
        for field in model.block.fields:
            K = field.conv.weight
            K.copy_(with_centre_taps(K, contractive_centre_taps(K, model.activation, rho=r, norm=config.reg_norm)))
        return model
    a, b, h, norm = act.a, act.b, cfg.h, config.reg_norm
    limit = step_rate_limit(a, b, h, norm)
    r = min((1 + margin) * config.rho + margin, 0.5 * (config.rho + limit))
    for field in model.block.fields:
        K = field.conv.weight
        W = K.detach().to(torch.float64)
        off = W * (1 - centre_mask(W))

        def factor(scale: float) -> float:
            V = off * scale
            if norm == "inf":
                R = V.abs().sum(dim=(1, 2, 3))
                c = -0.5 * (R + r / a + 1.0 / (h * b)) if a > 0 else -R
            else:
                c = torch.full((W.shape[0],), -a / (h * b * b) if b > 0 else 0.0, dtype=W.dtype)
            V = with_centre_taps(V, c)
            if norm == "inf":
                return float(euler_factor_inf(V, a, b, h)), V
            return float(euler_factor_2(V, a, b, h, conv_spectral_norm(V, cfg.block_size, cfg.block_size,
                                                                        cfg.padding))), V

        lo, hi = 0.0, 1.0
        best = factor(0.0)[1]
        whole, V = factor(1.0)
        if whole <= 1 - h * r:
            best = V
        else:
            for _ in range(20):
                mid = 0.5 * (lo + hi)
                f, V = factor(mid)
                if f <= 1 - h * r:
                    lo, best = mid, V
                else:
                    hi = mid
        K.copy_(best.to(K.dtype))
    return model


INITIALISERS: dict[str, Callable[[ConvNODE, TrainConfig], nn.Module]] = {
    "default": lambda model, config: model,
    "ibp": lambda model, config: ibp_init_(model),
    "contractive": contractive_init_,
}
"""Initialisations keyed by `TrainConfig.init` (the config's `None` resolves to 'contractive' with a regularizer,
else 'default')."""


def initialise_(model: ConvNODE, config: TrainConfig) -> ConvNODE:
    """Apply the config's initialisation: `init` (registry), then, if `neg_init`, the lab's negative block diagonal
    (centre taps -5, or deeper where the init already put them)."""
    INITIALISERS[config.init](model, config)
    if config.neg_init:
        negative_diagonal_init_(model)
    return model
