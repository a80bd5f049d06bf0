"""Certified training objectives, a registry keyed by `TrainConfig.certified_method`.

The objectives need the bound engine, which lives above this package (`certify`): it registers them when it is
imported (`import certify`), so the import graph keeps running one way (contraction <- nodes <- certify)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from contraction.errors import CNodeError
from nodes.classifier import ConvNODE
from nodes.config import TrainConfig

__all__ = ["RobustLoss", "Objective", "OBJECTIVES", "register_objective", "make_objective"]


@dataclass(frozen=True)
class RobustLoss:
    """A robust loss of one batch and which of its inputs the training bound proves (every margin > 0 over the
    ball; None when the objective bounds nothing, e.g. at eps 0)."""

    loss: torch.Tensor
    certified: torch.Tensor | None = None


Objective = Callable[[ConvNODE, torch.Tensor, torch.Tensor, torch.Tensor, float], RobustLoss]
"""L(model, x, y, logits, eps) -> RobustLoss (e.g. cross-entropy of certified worst-case logits at eps)."""

OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {}
"""Objective factories keyed by certified method name, filled by `certify.training`."""


def register_objective(name: str) -> Callable[[Callable[[TrainConfig], Objective]], Callable[[TrainConfig], Objective]]:
    """Decorator: register `factory(config) -> Objective` under `name`."""

    def deco(factory: Callable[[TrainConfig], Objective]) -> Callable[[TrainConfig], Objective]:
        OBJECTIVES[name] = factory
        return factory

    return deco


def make_objective(config: TrainConfig) -> Objective | None:
    """The certified objective the config names (None when `certified_eps` is 0)."""
    if config.certified_eps <= 0:
        return None
    if config.certified_method not in OBJECTIVES:
        raise CNodeError(f"certified method {config.certified_method!r} is not registered: its bound engine is in the "
                         "certify package (`import certify` before training)")
    return OBJECTIVES[config.certified_method](config)
