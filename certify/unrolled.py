"""The classifier as it runs, unrolled into explicit layers for bound propagation: embedding conv, one Euler
residual step x+ = x + h sigma(K_k x + b_k) per interval, readout. Euler only: other solvers have no such form."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from contraction.convops import apply_conv, apply_conv_adjoint, centre_taps
from contraction.errors import CNodeError
from contraction.slopes import Activation
from certify.lipschitz import readout_matrix
from nodes.classifier import ConvNODE

__all__ = ["ConvLayer", "Unrolled", "unroll"]


@dataclass(frozen=True)
class ConvLayer:
    """z = T(K) x + b with the layer's own padding; also |T|(K) r and the adjoint T(K)^T y."""

    weight: torch.Tensor
    bias: torch.Tensor
    padding: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_conv(x, self.weight, self.padding) + self.bias[:, None, None]

    def abs(self, r: torch.Tensor) -> torch.Tensor:
        """|T(K)| r with |K| taken tap by tap (>= the true |T| r when taps wrap onto each other)."""
        return apply_conv(r, self.weight.abs(), self.padding)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return apply_conv_adjoint(y, self.weight, self.padding)

    def centre(self) -> torch.Tensor:
        """Centre taps [C, 1, 1] (the diagonal of T(K) at every pixel)."""
        return centre_taps(self.weight)[:, None, None]


@dataclass(frozen=True)
class Unrolled:
    """x0 = sigma(embed u); x_{k+1} = x_k + h sigma(steps[k] x_k); logits = W flatten(x_N) + c."""

    embed: ConvLayer
    steps: tuple[ConvLayer, ...]
    h: float
    act: Activation
    readout_weight: torch.Tensor  # [classes, C*H*W]
    readout_bias: torch.Tensor  # [classes]

    def trajectory(self, u: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Pre-activations z_0..z_N (embedding, then each step) and states x_0..x_N."""
        z = [self.embed(u)]
        x = [self.act(z[0])]
        for layer in self.steps:
            z.append(layer(x[-1]))
            x.append(x[-1] + self.h * self.act(z[-1]))
        return z, x

    def logits(self, x_final: torch.Tensor) -> torch.Tensor:
        return x_final.flatten(1) @ self.readout_weight.T + self.readout_bias


def _layer(conv: nn.Conv2d, dtype: torch.dtype | None, detach: bool) -> ConvLayer:
    w, b = conv.weight, conv.bias
    if b is None:
        b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    if detach:
        w, b = w.detach(), b.detach()
    if dtype is not None:
        w, b = w.to(dtype), b.to(dtype)
    return ConvLayer(w, b, conv.padding_mode)


def unroll(model: ConvNODE, *, dtype: torch.dtype | None = torch.float64, detach: bool = True) -> Unrolled:
    """The model's layers (float64 copies by default; `detach=False, dtype=None` keeps them trainable)."""
    cfg = model.config
    if cfg.solver != "euler":
        raise CNodeError(f"bound propagation follows the Euler steps as run; this model uses {cfg.solver!r}")
    steps = tuple(_layer(model.block.field_at_step(k).conv, dtype, detach) for k in range(cfg.steps))
    W, c = readout_matrix(model, detach=detach), model.readout.bias
    if detach:
        c = c.detach()
    if dtype is not None:
        W, c = W.to(dtype), c.to(dtype)
    return Unrolled(_layer(model.embed, dtype, detach), steps, cfg.h, model.activation, W, c)

