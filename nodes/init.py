"""Weight initialisations named by `TrainConfig.init`, and the config's full initialisation of a model."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from contraction.regularizers import contractive_centre_taps
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
            module.weight.normal_(0.0, math.sqrt(2 * math.pi) / module.weight[0].numel())
            if module.bias is not None:
                module.bias.zero_()
    return model


@torch.no_grad()
def contractive_init_(model: ConvNODE, config: TrainConfig, *, margin: float = 0.2) -> ConvNODE:
    """PyTorch's initialisation, then each block conv's centre taps K[i, i, c, c] set so that the weight hinge of
    `config.reg_norm` holds at rate (1 + margin) rho + margin from the first step: the model starts certified
    contractive at the target the regularizer then keeps (Adam moves a weight by about lr per step, too little to
    dig the centre taps from about 0 to the -rho / a that rate needs within an epoch).

    The taps are `contraction.regularizers.contractive_centre_taps` at that rate r (needs a > 0)."""
    r = (1 + margin) * config.rho + margin
    for field in model.block.fields:
        K = field.conv.weight
        c = K.shape[-1] // 2
        idx = torch.arange(K.shape[0])
        K[idx, idx, c, c] = contractive_centre_taps(K, model.activation, rho=r, norm=config.reg_norm)
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
