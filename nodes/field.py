"""The ConvNODE vector fields, keyed by `ModelConfig.field` in `FIELD_TYPES`:

- 'paper': f(x) = sigma(K*x + b), the paper's field (Jacobian D T(K));
- 'gradient': f(x) = -K^T sigma(K*x + b), a gradient flow (Jacobian -T^T D T, symmetric negative semidefinite for
  every slope matrix D in [a, b]: non-expansive in L2 at every state). Its Euler step I - h T^T D T is non-expansive
  when h b ||T||_2^2 <= 2; the field enforces this by construction: every forward pass runs the kernel rescaled by
  min(1, sqrt(STEP_BUDGET / (h b)) / s(K)), s(K) the DFT bound of ||T(K)||_2 (exact for circular padding, a proven
  upper bound for zero padding), so the condition holds for every weight an optimiser reaches;
- 'contractive': the paper's field with its kernel mapped (`contraction.weights.contractive_kernel`) so that every
  Euler step is certified to shrink by 1 - h rho in the infinity norm, for every weight an optimiser reaches."""

from __future__ import annotations

import math

import torch
from torch import nn

from contraction.convops import apply_conv, apply_conv_adjoint, centre_mask, conv_spectral_norm_tensor, with_centre_taps
from contraction.slopes import Activation
from contraction.weights import contractive_cap, contractive_kernel

__all__ = ["ConvField", "GradientField", "ContractiveField", "FIELD_TYPES", "STEP_BUDGET", "make_conv"]

STEP_BUDGET = 2.0 * (1.0 - 1e-3)
"""The gradient field's enforced h b ||T||_2^2 (below the non-expansive limit 2, so that float32 round-off in the
rescaling cannot cross it: the certificate recomputes the factor from the kernel as run, in float64)."""


def make_conv(in_channels: int, out_channels: int, kernel_size: int, padding: str) -> nn.Conv2d:
    """A stride-1, same-size convolution with `zeros` or `circular` padding."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, padding_mode=padding)


class ConvField(nn.Module):
    """Autonomous vector field x' = sigma(conv(x)); `conv` keeps its kernel, bias and padding mode."""

    def __init__(self, conv: nn.Conv2d, activation: Activation, h: float, size: int,  # noqa: ARG002
                 rho: float = 0.0) -> None:  # noqa: ARG002
        super().__init__()
        self.conv = conv
        self.activation = activation

    def kernel(self) -> torch.Tensor:
        """The kernel as run (the certificates read this one)."""
        return self.conv.weight

    def kernel_and_bound(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The kernel as run and, where the field computes one anyway, its spectral bound (None here)."""
        return self.kernel(), None

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG002 - torchdiffeq signature
        return self.activation(self.conv(x))

    def slopes(self, x: torch.Tensor) -> torch.Tensor:
        """sigma'(K*x + b): the diagonal D of the Jacobian J = D T(K) at state x."""
        return self.activation.deriv(self.conv(x))


class GradientField(ConvField):
    """x' = -T(K)^T sigma(T(K) x + b) with K rescaled in every forward pass so that h b ||T(K)||_2^2 <= STEP_BUDGET
    (the module's `h` and state side `size` are the block's)."""

    def __init__(self, conv: nn.Conv2d, activation: Activation, h: float, size: int, rho: float = 0.0) -> None:
        super().__init__(conv, activation, h, size)
        self.h, self.size = h, size
        self.limit = math.sqrt(STEP_BUDGET / (h * activation.b))  # the largest spectral norm the step allows

    @property
    def padding(self) -> str:
        return self.conv.padding_mode

    def spectral_bound(self, K: torch.Tensor | None = None) -> torch.Tensor:
        """The DFT bound s(K) >= ||T(K)||_2 on the block's state (differentiable)."""
        return conv_spectral_norm_tensor(self.conv.weight if K is None else K, self.size, self.size, self.padding)

    def kernel_and_bound(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rescaled kernel K min(1, limit / s(K)) and its DFT bound min(s(K), limit) (the bound is homogeneous),
        both differentiable: certified training reuses the bound instead of a second spectral computation."""
        K = self.conv.weight
        s = self.spectral_bound(K)
        scale = (self.limit / s).clamp(max=1.0)
        return K * scale, s * scale

    def kernel(self) -> torch.Tensor:
        return self.kernel_and_bound()[0]

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        K = self.kernel()
        z = apply_conv(x, K, self.padding) + self.conv.bias[:, None, None]
        return -apply_conv_adjoint(self.activation(z), K, self.padding)

    def slopes(self, x: torch.Tensor) -> torch.Tensor:
        """sigma'(K*x + b) with the kernel as run: the D of the Jacobian -T^T D T at state x."""
        z = apply_conv(x, self.kernel(), self.padding) + self.conv.bias[:, None, None]
        return self.activation.deriv(z)


class ContractiveField(ConvField):
    """x' = sigma(K(W) * x + b), the paper's field with the raw kernel W (the conv's weight, what the optimiser and
    the checkpoint hold) mapped in every forward pass by `contraction.weights.contractive_kernel`: every Euler step
    of size h is certified to shrink distances by 1 - h rho in the infinity norm, for every weight."""

    def __init__(self, conv: nn.Conv2d, activation: Activation, h: float, size: int, rho: float = 0.0) -> None:
        super().__init__(conv, activation, h, size)
        self.h, self.rho = h, rho
        self._start()

    @torch.no_grad()
    def _start(self, fill: float = 0.5, centre: float = -2.0) -> None:
        """Start inside the map's range, not at its corner: PyTorch's raw kernel has off-centre row sums far above
        the cap (about 8.5 against 3 for `mini` at rho 0.2), which pins every centre tap at the stability limit
        -1 / (h b) (each step then erases the slope-1 part of its own state). Scale the raw off-centre taps to `fill`
        x the cap and set the raw centre taps so that each mapped centre sits near the least damping the rate allows
        (sigmoid(-2) = 12 % of the way to the limit)."""
        W = self.conv.weight
        a, b = self.activation.a, self.activation.b
        cap = contractive_cap(a, b, self.h, self.rho)
        off = W * (1 - centre_mask(W))
        R = off.abs().sum(dim=(1, 2, 3))
        off = off * (fill * cap / R.clamp_min(1e-12)).clamp(max=1.0)[:, None, None, None]
        W.copy_(with_centre_taps(off, torch.full_like(R, centre)))

    @property
    def padding(self) -> str:
        return self.conv.padding_mode

    def kernel(self) -> torch.Tensor:
        return contractive_kernel(self.conv.weight, self.activation.a, self.activation.b, self.h, self.rho)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        return self.activation(apply_conv(x, self.kernel(), self.padding) + self.conv.bias[:, None, None])

    def slopes(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation.deriv(apply_conv(x, self.kernel(), self.padding) + self.conv.bias[:, None, None])


FIELD_TYPES: dict[str, type[ConvField]] = {"paper": ConvField, "gradient": GradientField,
                                           "contractive": ContractiveField}
"""Vector-field modules keyed by `ModelConfig.field` (its FIELDS names)."""
