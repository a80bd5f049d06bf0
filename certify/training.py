"""Certified training: cross-entropy of the certified worst-case logits over the eps-ball.

For every wrong class j the logit z_j - z_y is replaced by an upper bound over the ball, -m_j, with m_j a
differentiable lower bound of the margin z_y - z_j:
- 'lipschitz' (Lipschitz-margin training): m_j = (z_y - z_j)(u) - eps * L_yj, L_yj the global pairwise constant
  (last layer's pair norm x every other layer's factor, Euler steps with slopes in [a, b]), in the chosen norm;
- 'interval': m_j from the local boxes of certify.local (interval + local-slope bounds through every Euler step),
  the IBP-style bound, tighter and what `certify --bound local` checks.
The loss is CE([-m_j]_j, y) (the y entry is 0), an upper bound of the worst-case CE over the ball."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contraction.errors import CNodeError
from certify.lipschitz import layer_constants
from certify.local import box_margins, local_bounds
from certify.unrolled import unroll
from nodes.classifier import ConvNODE
from nodes.config import CERTIFIED_METHODS, TrainConfig
from nodes.objectives import Objective, register_objective

__all__ = ["lipschitz_constants", "certified_margins", "certified_loss", "certified_objective"]


def lipschitz_constants(model: ConvNODE, norm: str) -> torch.Tensor:
    """Differentiable pairwise constants L_yj [K, K] of the whole network (each layer's own factor, the Euler steps'
    per-step bounds: the global bound of certify.lipschitz without the channel metric)."""
    if model.config.solver != "euler":
        raise CNodeError(f"certified training follows the Euler steps; this model uses {model.config.solver!r}")
    return layer_constants(unroll(model, dtype=None, detach=False), norm)


def certified_margins(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, method: str,
                      logits: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable lower bounds of z_y - z_j over the eps-ball, [B, K] (0 at j = y)."""
    if method == "lipschitz":
        z = model(x) if logits is None else logits
        m = z.gather(1, y[:, None]) - z - eps * lipschitz_constants(model, norm)[y]
    elif method == "interval":
        net = unroll(model, dtype=None, detach=False)
        b = local_bounds(net, x, eps, norm, interval=False)
        m = box_margins(net, y, b.lo, b.hi)
    else:
        raise CNodeError(f"certified method must be 'interval' or 'lipschitz', got {method!r}")
    return m.masked_fill(F.one_hot(y, m.shape[1]).bool(), 0.0)


def certified_loss(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "inf",
                   method: str = "interval", logits: torch.Tensor | None = None) -> torch.Tensor:
    """CE of the worst-case logits -m_j: >= max over the eps-ball of CE(model(u'), y)."""
    return F.cross_entropy(-certified_margins(model, x, y, eps, norm, method, logits), y)


def certified_objective(config: TrainConfig) -> Objective:
    """The training hook for nodes.train: certified_loss with the config's threat norm and method."""

    def objective(model: ConvNODE, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, eps: float) -> torch.Tensor:
        return certified_loss(model, x, y, eps, config.certified_norm, config.certified_method, logits)

    return objective


for _method in CERTIFIED_METHODS:  # every method the config accepts, one objective factory each
    register_objective(_method)(certified_objective)
