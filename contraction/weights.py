"""Weight-only contraction certificates of slope-restricted conv/dense layers, valid at every state.

For x' = sigma(T(K) x + b) with sigma' in [a, b], the Jacobian is J = D T(K), D = diag(d), d in [a, b].
Layer bounds below hold for every such D; the Euler step x+ = x + h sigma(T x + b) has Jacobian I + h D T.
All functions are differentiable in the kernel (the regularizers use them).
"""

from __future__ import annotations

import math

import torch

from contraction.convops import centre_taps, channel_abs_sums, check_kernel
from contraction.errors import CNodeError

__all__ = [
    "check_slopes",
    "metzler_majorant",
    "mu_inf_bound",
    "mu_1_bound",
    "mu_2_gershgorin_bound",
    "mu_inf_weighted_bound",
    "euler_factor_inf",
    "euler_factor_1",
    "euler_factor_2",
    "perron_weights",
    "euler_perron_weights",
]


def check_slopes(a: float, b: float) -> None:
    """Slope interval 0 <= a <= b, finite."""
    if not (math.isfinite(a) and math.isfinite(b) and 0.0 <= a <= b):
        raise CNodeError(f"slope bounds must satisfy 0 <= a <= b < inf, got a={a}, b={b}")


def _worst(s: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """max over d in [a, b] of d * s (elementwise): a*s when s < 0, b*s otherwise."""
    return torch.maximum(a * s, b * s)


def metzler_majorant(K: torch.Tensor) -> torch.Tensor:
    """Channel-level Metzler majorant: M[i,i] = K[i,i,c,c] + off-centre |K[i,i]|, M[i,j] = sum |K[i,j]| (j != i)."""
    M = channel_abs_sums(check_kernel(K, square=True))
    c = centre_taps(K)
    return M - torch.diag_embed(c.abs()) + torch.diag_embed(c)


def mu_inf_bound(K: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """mu_inf(D T(K)) <= max_i max(a s_i, b s_i), s_i = K_iic + off-diagonal row sum of channel i."""
    check_slopes(a, b)
    return _worst(metzler_majorant(K).sum(1), a, b).amax()


def mu_inf_weighted_bound(K: torch.Tensor, a: float, b: float, eta: torch.Tensor) -> torch.Tensor:
    """mu_{inf,eta}(D T(K)) <= max_i max(a s_i, b s_i), s_i = sum_j M_ij eta_i / eta_j (channel weights eta > 0)."""
    check_slopes(a, b)
    M = metzler_majorant(K)
    eta = eta.to(M.dtype)
    if eta.shape != (M.shape[0],) or not bool((eta > 0).all()):
        raise CNodeError(f"channel weights must be positive of shape ({M.shape[0]},), got {tuple(eta.shape)}")
    s = (M * eta[:, None] / eta[None, :]).sum(1)
    return _worst(s, a, b).amax()


def mu_1_bound(K: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """mu_1(D T(K)) <= max_j (max(a c_j, b c_j) + b * off-diagonal column sum of channel j)."""
    check_slopes(a, b)
    M = channel_abs_sums(check_kernel(K, square=True))
    c = centre_taps(K)
    return (_worst(c, a, b) + b * (M.sum(0) - c.abs())).amax()


def mu_2_gershgorin_bound(K: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """mu_2(D T(K)) <= max_i (max(a c_i, b c_i) + b (R_i + C_i) / 2): Gershgorin on the symmetric part."""
    check_slopes(a, b)
    M = channel_abs_sums(check_kernel(K, square=True))
    c = centre_taps(K)
    return (_worst(c, a, b) + 0.5 * b * (M.sum(1) + M.sum(0) - 2 * c.abs())).amax()


def _row_factor(c: torch.Tensor, off: torch.Tensor, h: float, d: float) -> torch.Tensor:
    return (1.0 + h * d * c).abs() + h * d * off


def euler_factor_inf(K: torch.Tensor, a: float, b: float, h: float, eta: torch.Tensor | None = None) -> torch.Tensor:
    """||I + h D T(K)||_{inf,eta} <= max_i max_{d in {a,b}} |1 + h d c_i| + h d R_i(eta) (convex in d: ends suffice).

    When h b |c_i| <= 1 for all i this equals 1 + h * mu bound; it holds without that condition."""
    check_slopes(a, b)
    M = metzler_majorant(K)
    c = centre_taps(K)
    off = M - torch.diag_embed(c)  # off-diagonal parts of each channel's row
    if eta is not None:
        eta = eta.to(M.dtype)
        off = off * eta[:, None] / eta[None, :]
    R = off.sum(1)
    return torch.maximum(_row_factor(c, R, h, a), _row_factor(c, R, h, b)).amax()


def euler_factor_1(K: torch.Tensor, a: float, b: float, h: float) -> torch.Tensor:
    """||I + h D T(K)||_1 <= max_j max_{d in {a,b}} |1 + h d c_j| + h b C_j (column form; other rows' d <= b)."""
    check_slopes(a, b)
    M = channel_abs_sums(check_kernel(K, square=True))
    c = centre_taps(K)
    C = M.sum(0) - c.abs()
    return torch.maximum((1 + h * a * c).abs(), (1 + h * b * c).abs()).add(h * b * C).amax()


def euler_factor_2(K: torch.Tensor, a: float, b: float, h: float, spectral_norm: float) -> torch.Tensor:
    """||I + h D T||_2 <= min(sqrt(1 + 2 h mu2 + h^2 b^2 ||T||^2), 1 + h b ||T||) with mu2 the Gershgorin bound."""
    mu2 = mu_2_gershgorin_bound(K, a, b)
    sq = 1.0 + 2.0 * h * mu2 + (h * b * spectral_norm) ** 2
    return torch.minimum(sq.clamp_min(0.0).sqrt(), torch.as_tensor(1.0 + h * b * spectral_norm, dtype=sq.dtype))


def _nonlinear_perron(maps: list[torch.Tensor], iters: int = 500) -> torch.Tensor:
    """Positive v (nearly) minimising max_i max_m (A_m v)_i / v_i for nonnegative A_m (power iteration on max_m A_m v).

    Any positive v gives a sound weighted bound; the iteration only makes it tighter."""
    A = torch.stack([m.detach().to(torch.float64) for m in maps])
    n = A.shape[-1]
    scale = float(A.abs().max()) or 1.0
    A = A + 1e-9 * scale * (1 - torch.eye(n, dtype=A.dtype))  # irreducible
    env = A.amax(0)
    ev, vecs = torch.linalg.eig(env)
    v = vecs[:, ev.real.argmax()].real.abs().clamp_min(1e-12)
    best, best_val = v / v.max(), math.inf
    for _ in range(iters):
        Fv = (A @ v).amax(0)
        val = float((Fv / v).max())
        if val < best_val - 1e-15:
            best, best_val = v.clone(), val
        v = (Fv / Fv.max()).clamp_min(1e-12)
    return best


def perron_weights(kernels: list[torch.Tensor]) -> torch.Tensor:
    """Channel weights eta (max_i eta_i |x_i| norm) minimising the weighted mu_inf bound over all the layers.

    For one layer: eta = 1 / Perron vector of the Metzler majorant, rate = -a * its spectral abscissa."""
    Ms = [metzler_majorant(K).detach().to(torch.float64) for K in kernels]
    shift = max(float(M.diagonal().abs().max()) for M in Ms) + 1.0
    return 1.0 / _best_vector([M + shift * torch.eye(M.shape[0], dtype=M.dtype) for M in Ms])


def euler_perron_weights(kernels: list[torch.Tensor], a: float, b: float, h: float) -> torch.Tensor:
    """Common channel weights eta for the Euler steps' weighted infinity norm (nonlinear Perron vector)."""
    maps = []
    for K in kernels:
        M = metzler_majorant(K).detach().to(torch.float64)
        c = centre_taps(K).detach().to(torch.float64)
        off = M - torch.diag_embed(c)
        for d in (a, b):
            maps.append(h * d * off + torch.diag_embed((1 + h * d * c).abs()))
    return 1.0 / _best_vector(maps)


def _best_vector(maps: list[torch.Tensor]) -> torch.Tensor:
    """The Perron iterate, or all ones when the iteration (reducible or ill-conditioned maps) did not beat it:
    the weighted gain max_i (M v)_i / v_i never exceeds the unweighted one."""
    v = _nonlinear_perron(maps)
    ones = torch.ones_like(v)
    gain = lambda w: max(float(((M @ w) / w).max()) for M in maps)  # noqa: E731
    return v if bool(torch.isfinite(v).all()) and bool((v > 0).all()) and gain(v) <= gain(ones) else ones
