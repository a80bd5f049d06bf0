"""The ConvNODE vector field f(x) = sigma(K*x + b) with a slope-restricted activation."""

from __future__ import annotations

import torch
from torch import nn

from contraction.slopes import Activation

__all__ = ["ConvField", "make_conv"]


def make_conv(in_channels: int, out_channels: int, kernel_size: int, padding: str) -> nn.Conv2d:
    """A stride-1, same-size convolution with `zeros` or `circular` padding."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, padding_mode=padding)


class ConvField(nn.Module):
    """Autonomous vector field x' = sigma(conv(x)); `conv` keeps its kernel, bias and padding mode."""

    def __init__(self, conv: nn.Conv2d, activation: Activation) -> None:
        super().__init__()
        self.conv = conv
        self.activation = activation

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG002 - torchdiffeq signature
        return self.activation(self.conv(x))

    def slopes(self, x: torch.Tensor) -> torch.Tensor:
        """sigma'(K*x + b): the diagonal D of the Jacobian J = D T(K) at state x."""
        return self.activation.deriv(self.conv(x))
