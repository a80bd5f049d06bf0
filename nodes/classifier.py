"""ConvNODE classifier: embedding conv -> ODE block -> readout, on images [B, 1, 28, 28] in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

from contraction.errors import CNodeError
from nodes.block import ODEBlock
from nodes.config import ModelConfig
from nodes.field import make_conv

__all__ = ["ConvNODE"]


class ConvNODE(nn.Module):
    """logits = W * flatten(xT) + c, xT = ODE block(sigma(conv0 u)); `readout='avgpool'` averages pixels first."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.activation = config.act
        self.embed = make_conv(config.in_channels, config.channels, config.kernel_size, config.padding)
        self.block = ODEBlock(config)
        features = config.channels * (config.image_size**2 if config.readout == "linear" else 1)
        self.readout = nn.Linear(features, config.num_classes)

    def _check_input(self, u: torch.Tensor) -> None:
        cfg = self.config
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if not isinstance(u, torch.Tensor) or u.dim() != 4 or tuple(u.shape[1:]) != want:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise CNodeError(f"expected input of shape [B, {want[0]}, {want[1]}, {want[2]}], got {got}")

    def embedding(self, u: torch.Tensor) -> torch.Tensor:
        """x0 = sigma(conv0 u)."""
        self._check_input(u)
        return self.activation(self.embed(u))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Readout of a final state: flatten (or average over pixels), then the linear layer."""
        feats = x.flatten(1) if self.config.readout == "linear" else x.mean(dim=(2, 3))
        return self.readout(feats)

    def trajectory(self, u: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the ODE states x_0, ..., x_N visited (the regularizers sample these)."""
        states = self.block.trajectory(self.embedding(u))
        return self.head(states[-1]), states

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.trajectory(u)[0]
