"""Plugging the contraction regularizers into ConvNODE training: R(model, states) for the training hook."""

from __future__ import annotations

from typing import Callable

import torch

from contraction.errors import CNodeError
from contraction.regularizers import jacobian_hinge, weight_hinge
from nodes.classifier import ConvNODE
from nodes.config import TrainConfig

__all__ = ["Regularizer", "make_regularizer", "negative_diagonal_init_"]

Regularizer = Callable[[ConvNODE, list[torch.Tensor]], torch.Tensor]
"""R(model, states) -> scalar; the loss is CE + reg_weight * R."""


def make_regularizer(
    config: TrainConfig, *, samples_per_step: int = 16, steps_sampled: int = 3, iters: int = 5, seed: int = 0
) -> Regularizer | None:
    """The regularizer named by `config.reg` (None for 'none'), with its rho and norm.

    jacobian: relu(mu(J(x_k)) + rho) averaged over `steps_sampled` random steps x `samples_per_step` states
    of the batch's trajectories (mu_inf exact, mu_2 by `iters` power iterations); weight: the weight hinge
    summed over the block's convolutions."""
    if config.reg == "none":
        return None
    gen = torch.Generator().manual_seed(seed)

    if config.reg == "weight":

        def weight_reg(model: ConvNODE, states: list[torch.Tensor]) -> torch.Tensor:  # noqa: ARG001
            return weight_hinge(
                [f.conv for f in model.block.fields], model.activation, rho=config.rho, norm=config.norm
            )

        return weight_reg

    if config.reg == "jacobian":

        def jacobian_reg(model: ConvNODE, states: list[torch.Tensor]) -> torch.Tensor:
            n_steps = len(states) - 1
            ks = torch.randperm(n_steps, generator=gen)[: min(steps_sampled, n_steps)].tolist()
            terms = []
            for k in ks:
                x = states[k]
                idx = torch.randperm(x.shape[0], generator=gen)[: min(samples_per_step, x.shape[0])]
                field = model.block.field_at_step(k)
                terms.append(
                    jacobian_hinge(field.conv, model.activation, x[idx], rho=config.rho, norm=config.norm, iters=iters)
                )
            return torch.stack(terms).mean()

        return jacobian_reg
    raise CNodeError(f"unknown regularizer {config.reg!r}")


@torch.no_grad()
def negative_diagonal_init_(model: ConvNODE, value: float = -5.0) -> ConvNODE:
    """Set the centre taps K[i, i, c, c] of every block convolution to `value` (the lab's initialisation)."""
    for field in model.block.fields:
        K = field.conv.weight
        c = K.shape[-1] // 2
        idx = torch.arange(K.shape[0])
        K[idx, idx, c, c] = value
    return model
