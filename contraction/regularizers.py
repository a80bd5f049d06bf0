"""Contraction-promoting penalties (loss = CE + lambda * R) for slope-restricted conv or dense vector fields.

They take layers (nn.Conv2d / nn.Linear / kernels) and states, not a particular model, so they work in any
plain PyTorch loop on a field x' = sigma(layer(x)).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from contraction.convops import (as_kernel, centre_taps, channel_abs_sums, check_kernel, conv_spectral_norm_tensor,
                                 layer_padding, offdiag_row_sums)
from contraction.errors import CNodeError, check_norm, norm_error
from contraction.jacobian import mu_1_at, mu_2_estimate, mu_inf_at, step_norm_2_estimate, step_norm_inf_at
from contraction.slopes import Activation
from contraction.weights import euler_row_factors_inf, euler_row_terms_2, metzler_majorant

__all__ = ["weight_hinge", "contractive_centre_taps", "jacobian_hinge", "jacobian_log_norm", "jacobian_step_norm",
           "REG_TARGETS"]


def _check_rho(rho: float) -> None:
    if not (isinstance(rho, (int, float)) and rho >= 0 and rho == rho and rho != float("inf")):
        raise CNodeError(f"rho must be a finite number >= 0, got {rho!r}")


def _hinge(v: torch.Tensor, squared: bool) -> torch.Tensor:
    """relu(v), or relu(v)^2: the squared hinge's gradient 2 relu(v) grows with the violation, so the target rho
    changes the trained model even under Adam (the linear hinge's gradient is the same for every rho while active,
    and Adam's step ignores its scale)."""
    h = F.relu(v)
    return h * h if squared else h


REG_TARGETS = ("step", "flow")
"""What a contraction target rho means: 'step', every Euler step of size h as run shrinks distances by 1 - h rho
(the network as it runs); 'flow', the continuous flow's log-norm mu(D T) <= -rho (the paper's target, which the
Euler map keeps only when also h b |c_i| <= 1)."""


def _check_target(target: str, h: float | None) -> None:
    if target not in REG_TARGETS:
        raise CNodeError(f"target must be one of {list(REG_TARGETS)}, got {target!r}")
    if target == "step" and not (isinstance(h, (int, float)) and h > 0 and h == h and h != float("inf")):
        raise CNodeError(f"the step target needs the Euler step h > 0 (got {h!r}); or target='flow' for the flow's rate")


def weight_hinge(
    layers: Iterable[nn.Module | torch.Tensor], activation: Activation, *, rho: float, norm: str = "inf",
    squared: bool = False, target: str = "step", h: float | None = None, size: int | None = None
) -> torch.Tensor:
    """Weight penalty, zero iff every layer is certified at rate rho for all states (`squared`: each channel's hinge
    squared).

    target 'step' (the network as run, Euler step h), per channel i, in the flow hinge's units (divided by h a,
    so that it equals the flow's s_i + rho / a wherever the step does not overshoot, h b |c_i| <= 1):
      inf: relu(max_{d in {a,b}} |1 + h d c_i| + h d R_i - (1 - h rho)) / (h a) (`euler_row_factors_inf`), zero iff
      the step's certified inf-norm factor is <= 1 - h rho;
      2: relu(1 + 2 h g_i + h^2 b^2 ||T||^2 - (1 - h rho)^2) / (2 h a) (`euler_row_terms_2`, ||T||_2 by the DFT on
      the `size` x `size` state), zero iff the step's certified L2 factor is <= 1 - h rho.
    target 'flow' (the continuous flow's rate; the Euler map keeps it only when also h b |c_i| <= 1):
      inf: sum_i relu(s_i + rho/a), s_i = K_iic + off-diagonal row sum (then mu_inf(D T) <= -rho, needs a > 0);
      2 (the lab's conv form): sum_i relu(2 rho + 2 (a+b) K_iic + b (sum|K[i]| + sum|K[:, i]|)), a Gershgorin
      argument on the symmetric part then gives mu_2(D T) <= -rho."""
    _check_rho(rho)
    _check_target(target, h)
    a, b = activation.a, activation.b
    terms = []
    for layer in layers:
        K = as_kernel(layer)
        check_norm(norm)
        if target == "step":
            unit = h * (a if a > 0 else 1.0)  # excess / (h a) = s_i + rho / a while h b |c| <= 1
            if norm == "inf":
                excess = (euler_row_factors_inf(K, a, b, h) - (1 - h * rho)) / unit
            else:
                if size is None:
                    raise CNodeError("the L2 step target needs the state's side `size` (for ||T(K)||_2)")
                snorm = conv_spectral_norm_tensor(K, size, size, layer_padding(layer))
                excess = (euler_row_terms_2(K, a, b, h, snorm) - (1 - h * rho) ** 2) / (2 * unit)
            terms.append(_hinge(excess, squared).sum())
        elif norm == "inf":
            if a <= 0:
                raise CNodeError(f"the inf-norm weight hinge needs a lower slope a > 0 ({activation.name} has a = {a})")
            terms.append(_hinge(metzler_majorant(K).sum(1) + rho / a, squared).sum())
        else:
            M = channel_abs_sums(K)
            terms.append(_hinge(2 * rho + 2 * (a + b) * centre_taps(K) + b * (M.sum(1) + M.sum(0)), squared).sum())
    if not terms:
        raise CNodeError("weight_hinge needs at least one layer")
    return torch.stack(terms).sum()


def contractive_centre_taps(K: torch.Tensor, activation: Activation, *, rho: float, norm: str = "inf") -> torch.Tensor:
    """The centre taps [C] that put `weight_hinge`'s terms for kernel K exactly at zero for rate rho, the other taps
    kept (any lower centre tap keeps them <= 0).

    inf: c_i = -(off-diagonal row sum_i + rho / a); 2 (c_i < 0 turns 2 (a+b) c_i + 2 b |c_i| into 2 a c_i):
    c_i = -(2 rho + b * (off-centre row and column sums_i)) / (2 a)."""
    _check_rho(rho)
    a, b = activation.a, activation.b
    if a <= 0:
        raise CNodeError(f"contractive centre taps need a lower slope a > 0 ({activation.name} has a = {a})")
    K = check_kernel(K, square=True)
    if norm == "inf":
        return -(offdiag_row_sums(K) + rho / a)
    if norm == "2":
        M = channel_abs_sums(K) - torch.diag_embed(centre_taps(K).abs())
        return -(2 * rho + b * (M.sum(1) + M.sum(0))) / (2 * a)
    raise norm_error(norm)


def _as_images(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None, None] if isinstance(layer, nn.Linear) else x


def jacobian_log_norm(
    layer: nn.Module, activation: Activation, x: torch.Tensor, *, norm: str = "2", iters: int = 5,
    v0: torch.Tensor | None = None
) -> torch.Tensor:
    """mu(J(x)) per sample for x' = sigma(layer(x)): exact for inf and 1, power-iteration estimate for 2.

    Differentiable in the layer's parameters (the state x is treated as data)."""
    x = x.detach()
    if norm in ("inf", "1"):
        K = as_kernel(layer)
        d = activation.deriv(layer(x))
        d = _as_images(layer, d)
        probe = mu_inf_at if norm == "inf" else mu_1_at
        return probe(d, K, layer_padding(layer))
    if norm == "2":
        est, _ = mu_2_estimate(lambda z: activation(layer(z)), x, iters=iters, v0=v0, differentiable=True)
        return est
    raise norm_error(norm, ("inf", "1", "2"))


def jacobian_step_norm(
    layer: nn.Module, activation: Activation, x: torch.Tensor, h: float, *, norm: str = "inf", iters: int = 5,
    v0: torch.Tensor | None = None
) -> torch.Tensor:
    """||I + h J(x)|| per sample, the Jacobian of the Euler step x + h sigma(layer(x)) at x: exact for inf, a power-
    iteration estimate for 2. Differentiable in the layer's parameters (the state is data)."""
    x = x.detach()
    if norm == "inf":
        d = _as_images(layer, activation.deriv(layer(x)))
        return step_norm_inf_at(d, as_kernel(layer), layer_padding(layer), h)
    if norm == "2":
        return step_norm_2_estimate(lambda z: activation(layer(z)), x, h, iters=iters, v0=v0, differentiable=True)[0]
    raise norm_error(norm)


def jacobian_hinge(
    layer: nn.Module, activation: Activation, states: torch.Tensor, *, rho: float, norm: str = "2", iters: int = 5,
    squared: bool = False, target: str = "step", h: float | None = None
) -> torch.Tensor:
    """Mean over the states of the hinge (`squared`: its square) for the field x' = sigma(layer(x)):
    target 'step': relu(||I + h J(x_k)|| - (1 - h rho)) / h, the Euler step as run (in the flow's units);
    'flow': relu(mu(J(x_k)) + rho)."""
    _check_rho(rho)
    _check_target(target, h)
    if target == "step":  # divided by h: the flow hinge's units, (||I + h J|| - 1) / h -> mu(J) as h -> 0
        return _hinge((jacobian_step_norm(layer, activation, states, h, norm=norm, iters=iters) - (1 - h * rho)) / h,
                      squared).mean()
    return _hinge(jacobian_log_norm(layer, activation, states, norm=norm, iters=iters) + rho, squared).mean()
