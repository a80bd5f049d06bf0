"""Jacobian probes at states, matrix-free: J(x) = D(x) T(K) for x' = sigma(T(K) x + b), never a dense matrix.

mu_inf and mu_1 of D T are exact from D and the kernel (per pixel, boundary included). mu_2 comes from power
iteration on the symmetric part through JVP/VJP of any vector field: a lower estimate of the true value.
"""

from __future__ import annotations

from typing import Callable

import torch

from contraction.convops import apply_conv_adjoint, centre_taps, pixel_row_sums

__all__ = ["mu_inf_at", "mu_1_at", "mu_2_estimate", "jacobian_vector_products", "step_norm_inf_at",
           "step_norm_2_estimate"]


def mu_inf_at(d: torch.Tensor, K: torch.Tensor, padding: str) -> torch.Tensor:
    """mu_inf(D T(K)) per sample, d = sigma'(pre-activation) of shape [B, C, H, W]: max_p d_p (c_p + R_p)."""
    _, C, H, W = d.shape
    c = centre_taps(K)
    R = pixel_row_sums(K, H, W, padding) - c.abs()[:, None, None]  # off-diagonal row sums per pixel
    return (d * (c[:, None, None] + R)).flatten(1).amax(1)


def step_norm_inf_at(d: torch.Tensor, K: torch.Tensor, padding: str, h: float) -> torch.Tensor:
    """||I + h D T(K)||_inf per sample (the Euler step's Jacobian at the state whose slopes are d, [B, C, H, W]):
    max_p |1 + h d_p c_p| + h d_p R_p, exact (boundary pixels' shorter rows included)."""
    _, C, H, W = d.shape
    c = centre_taps(K)
    R = pixel_row_sums(K, H, W, padding) - c.abs()[:, None, None]
    return ((1 + h * d * c[:, None, None]).abs() + h * d * R).flatten(1).amax(1)


def mu_1_at(d: torch.Tensor, K: torch.Tensor, padding: str) -> torch.Tensor:
    """mu_1(D T(K)) per sample: max_q (d_q c_q + sum_{p != q} d_p |T_pq|), column sums by the adjoint |K| conv."""
    c = centre_taps(K)[None, :, None, None]
    cols = apply_conv_adjoint(d, K.abs(), padding)  # sum_p d_p |T_pq| (diagonal included)
    return (cols - d * c.abs() + d * c).flatten(1).amax(1)


def jacobian_vector_products(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """v -> J(x) v and v -> J(x)^T v for a batched vector field f (per-sample Jacobians; samples independent)."""
    _, vjp_fn = torch.func.vjp(f, x)

    def jvp(v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(f, (x,), (v,))[1]

    def vjp(v: torch.Tensor) -> torch.Tensor:
        return vjp_fn(v)[0]

    return jvp, vjp


def mu_2_estimate(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    iters: int = 20,
    shift: float | None = None,
    v0: torch.Tensor | None = None,
    differentiable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate of mu_2(J(x)) = lambda_max of the symmetric part, per sample: shifted power iteration.

    Returns (estimate [B], last unit vector). The Rayleigh quotient never exceeds the true mu_2 (a lower
    estimate, not a bound). `shift` must bound the spectral radius of the symmetric part (default: estimated
    from a few power steps on it). With `differentiable`, the final quotient carries gradients to f's parameters
    (vector detached), for regularizers."""
    x = x.detach()
    jvp, vjp = jacobian_vector_products(f, x)

    def sym(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (jvp(v) + vjp(v))

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (v.dim() - 1))

    def rq(v: torch.Tensor, Sv: torch.Tensor) -> torch.Tensor:
        return (v * Sv).flatten(1).sum(1)

    v = unit(torch.randn_like(x) if v0 is None else v0.detach())
    with torch.no_grad():
        if shift is None:
            w = v
            for _ in range(5):
                w = unit(sym(w))
            shift = 1.1 * float(sym(w).flatten(1).norm(dim=1).max()) + 1e-6
        for _ in range(iters):
            v = unit(sym(v) + shift * v)
    if differentiable:
        f_jvp = torch.func.jvp(f, (x,), (v,))[1]
        return rq(v, f_jvp), v  # v^T S v = v^T J v
    with torch.no_grad():
        return rq(v, sym(v)), v


def step_norm_2_estimate(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float, *, iters: int = 20,
    v0: torch.Tensor | None = None, differentiable: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate of ||I + h J(x)||_2 per sample (the Euler step's Jacobian): power iteration on
    (I + h J)^T (I + h J) through JVP/VJP. Returns (||(I + h J) v|| for the last unit vector v, v): a lower estimate
    of the norm, not a bound. With `differentiable`, the estimate carries gradients to f's parameters (v detached)."""
    x = x.detach()
    jvp, vjp = jacobian_vector_products(f, x)

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (v.dim() - 1))

    v = unit(torch.randn_like(x) if v0 is None else v0.detach())
    with torch.no_grad():
        for _ in range(iters):
            u = v + h * jvp(v)
            v = unit(u + h * vjp(u))
    if differentiable:
        return (v + h * torch.func.jvp(f, (x,), (v,))[1]).flatten(1).norm(dim=1), v
    with torch.no_grad():
        return (v + h * jvp(v)).flatten(1).norm(dim=1), v
