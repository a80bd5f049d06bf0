"""Almost-orthogonal layers (AOL, Prach & Lampert, ECCV 2022): a linear map P whose input columns are rescaled by
d_i = (sum_j |P^T P|_ij)^(-1/2) has ||P diag(d)||_2 <= 1, whatever P is (a Gershgorin bound on the rescaled Gram
matrix). As a `torch.nn.utils.parametrize` parametrization of a layer's weight, every stem convolution and hidden head
layer of a ConvNODE is 1-Lipschitz in L2 by construction (`ModelConfig.lipschitz_layers = 'aol'`), so that the
network's L2 bound is the product of factors at most 1 and the last layer's pairwise row norms.

Convolutions: the Gram matrix of a convolution is the convolution by the kernel's autocorrelation
G[i, j] = sum_o K[o, i] * K[o, j] (a (2k - 1) x (2k - 1) kernel), so one scale per input channel,
d_i = (sum_{j, taps} |G[i, j, tap]|)^(-1/2), bounds every column of the conv matrix: with zero padding the matrix is
a block of the infinite-domain convolution, with circular padding taps that wrap onto one pixel add up to at most
the sum of their magnitudes, and a stride keeps a subset of the stride-1 rows. All three only shrink the Gram row
sums, so the bound holds for the conv as run, provided a circular conv has no more stride-1 outputs than the torus
has pixels (2 x padding <= kernel - 1; otherwise rows repeat and the norm can exceed 1: ModelConfig refuses it). The
certificate never relies on it: it measures each layer's norm (certify.bounds.layers); the parametrization shapes
what training can reach.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["LIPSCHITZ_LAYERS", "repeats_torus_pixels", "aol_linear_scale", "aol_conv_scale", "AOLLinear", "AOLConv",
           "apply_lipschitz_layers", "raw_weight"]

LIPSCHITZ_LAYERS = ("free", "aol")
"""`ModelConfig.lipschitz_layers`: free weights, or AOL-rescaled stem convs and hidden head layers."""

def repeats_torus_pixels(kernel: int, pad: int) -> bool:
    """Whether a circular conv with this kernel and padding width has more stride-1 outputs than the torus has
    pixels (2 x padding > kernel - 1): its rows repeat, and the AOL scale no longer bounds its norm by 1."""
    return 2 * pad > kernel - 1


_FLOOR = 1e-12  # a zero column's Gram row sum: any scale keeps it zero


def aol_linear_scale(W: torch.Tensor) -> torch.Tensor:
    """d [in] with ||W diag(d)||_2 <= 1 for W [out, in]: d_i = (sum_j |W^T W|_ij)^(-1/2)."""
    gram = (W.T @ W).abs().sum(dim=1)
    return gram.clamp_min(_FLOOR).rsqrt()


def aol_conv_scale(K: torch.Tensor) -> torch.Tensor:
    """d [in] with ||conv(K diag(d))||_2 <= 1 for a kernel K [out, in, k, k], any padding and stride: the Gram row
    sums sum_{j, taps} |G[i, j, tap]| of the autocorrelation G[i, j] = sum_o K[o, i] (x) K[o, j]."""
    k_h, k_w = K.shape[-2:]
    Kt = K.transpose(0, 1)  # [in, out, k, k]: each input channel's filters as an image with `out` channels
    gram = F.conv2d(Kt, Kt, padding=(k_h - 1, k_w - 1))  # [in, in, 2k-1, 2k-1]
    return gram.abs().sum(dim=(1, 2, 3)).clamp_min(_FLOOR).rsqrt()


class AOLLinear(nn.Module):
    """Parametrization of a Linear weight [out, in]: W diag(d), d from `aol_linear_scale`."""

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return W * aol_linear_scale(W)[None, :]


class AOLConv(nn.Module):
    """Parametrization of a Conv2d weight [out, in, k, k]: each input channel's taps scaled by `aol_conv_scale`."""

    def forward(self, K: torch.Tensor) -> torch.Tensor:
        return K * aol_conv_scale(K)[None, :, None, None]


def apply_lipschitz_layers(modules: list[nn.Module], kind: str) -> None:
    """Register the `kind` parametrization ('aol') on the weight of each Conv2d / Linear in `modules` ('free': none)."""
    if kind == "free":
        return
    if kind != "aol":
        raise ValueError(f"unknown lipschitz_layers {kind!r}; choose from {LIPSCHITZ_LAYERS}")
    for module in modules:
        if isinstance(module, nn.Conv2d):
            parametrize.register_parametrization(module, "weight", AOLConv())
        elif isinstance(module, nn.Linear):
            parametrize.register_parametrization(module, "weight", AOLLinear())
        else:
            raise TypeError(f"AOL needs a Conv2d or Linear, got {type(module).__name__}")


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The trained tensor behind `module.weight`: the parametrization's original where one is registered (an
    initialiser writes there; writing into the computed `weight` would be lost)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original  # type: ignore[union-attr,return-value]
    return module.weight  # type: ignore[return-value]
