"""Plugging the contraction regularizers into ConvNODE training: R(model, states), built from a TrainConfig through
the `REGULARIZER_FACTORIES` registry keyed by `TrainConfig.reg`."""

from __future__ import annotations

from typing import Callable

import torch

from contraction.errors import CNodeError
from contraction.regularizers import jacobian_hinge, weight_hinge
from nodes.classifier import ConvNODE
from nodes.config import TrainConfig

__all__ = ["Regularizer", "REGULARIZER_FACTORIES", "make_regularizer", "negative_diagonal_init_"]

Regularizer = Callable[[ConvNODE, list[torch.Tensor]], torch.Tensor]
"""R(model, states) -> scalar; the loss is CE + reg_weight * R."""


def _weight(config: TrainConfig, gen: torch.Generator) -> Regularizer:  # noqa: ARG001
    """The weight hinge summed over the block's convolutions: zero iff every Euler step is certified to shrink by
    1 - h rho (target 'step'), or the flow at rate rho (target 'flow')."""

    def weight_reg(model: ConvNODE, states: list[torch.Tensor]) -> torch.Tensor:  # noqa: ARG001
        return weight_hinge([f.conv for f in model.block.fields], model.activation, rho=config.rho,
                            norm=config.reg_norm, squared=config.reg_hinge == "squared", target=config.reg_target,
                            h=model.config.h, size=model.config.block_size)

    return weight_reg


def _jacobian(config: TrainConfig, gen: torch.Generator, *, samples_per_step: int = 16, steps_sampled: int = 3,
              iters: int = 5) -> Regularizer:
    """The Jacobian hinge (target 'step': relu(||I + h J(x_k)|| - (1 - h rho)); 'flow': relu(mu(J(x_k)) + rho)) averaged over `steps_sampled` random steps x `samples_per_step`
    states of the batch's trajectories (mu_inf exact, mu_2 by `iters` power iterations)."""

    def jacobian_reg(model: ConvNODE, states: list[torch.Tensor]) -> torch.Tensor:
        n_steps = len(states) - 1
        ks = torch.randperm(n_steps, generator=gen)[: min(steps_sampled, n_steps)].tolist()
        terms = []
        for k in ks:
            x = states[k]
            idx = torch.randperm(x.shape[0], generator=gen)[: min(samples_per_step, x.shape[0])].to(x.device)
            field = model.block.field_at_step(k)
            terms.append(jacobian_hinge(field.conv, model.activation, x[idx], rho=config.rho, norm=config.reg_norm,
                                        iters=iters, squared=config.reg_hinge == "squared", target=config.reg_target,
                                        h=model.config.h))
        return torch.stack(terms).mean()

    return jacobian_reg


REGULARIZER_FACTORIES: dict[str, Callable[[TrainConfig, torch.Generator], Regularizer]] = {"weight": _weight,
                                                                                           "jacobian": _jacobian}
"""Regularizer factories keyed by `TrainConfig.reg` ('none' is no regularizer)."""


def make_regularizer(config: TrainConfig, *, seed: int | None = None,
                     generator: torch.Generator | None = None) -> Regularizer | None:
    """The regularizer named by `config.reg` (None for 'none'), with its rho, norm and hinge; its sampling generator
    is `generator`, else a new one seeded with `seed`, by default the config's seed."""
    if config.reg == "none":
        return None
    if config.reg not in REGULARIZER_FACTORIES:
        raise CNodeError(f"unknown regularizer {config.reg!r}; known: {sorted(REGULARIZER_FACTORIES)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed if seed is None else seed)
    return REGULARIZER_FACTORIES[config.reg](config, gen)


@torch.no_grad()
def negative_diagonal_init_(model: ConvNODE, value: float = -5.0) -> ConvNODE:
    """Set the centre taps K[i, i, c, c] of every block convolution to `value` (the lab's initialisation), or keep
    them where they are already below it."""
    for field in model.block.fields:
        K = field.conv.weight
        c = K.shape[-1] // 2
        idx = torch.arange(K.shape[0])
        K[idx, idx, c, c] = torch.clamp(K[idx, idx, c, c], max=value)
    return model
