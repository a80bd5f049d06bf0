"""Weight initialisations named by `TrainConfig.init`, and the config's full initialisation of a model."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from nodes.classifier import ConvNODE
from nodes.config import TrainConfig
from nodes.regularize import negative_diagonal_init_

__all__ = ["INITIALISERS", "ibp_init_", "initialise_"]


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


INITIALISERS: dict[str, Callable[[nn.Module], nn.Module]] = {"default": lambda model: model, "ibp": ibp_init_}


def initialise_(model: ConvNODE, config: TrainConfig) -> ConvNODE:
    """Apply the config's initialisation: `init` (registry), then the negative block diagonal if `neg_init`."""
    INITIALISERS[config.init](model)
    if config.neg_init:
        negative_diagonal_init_(model)
    return model
