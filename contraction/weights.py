"""Weight-only contraction certificates of slope-restricted conv/dense layers, valid at every state.

For x' = sigma(T(K) x + b) with sigma' in [a, b], the Jacobian is J = D T(K), D = diag(d), d in [a, b].
Layer bounds below hold for every such D; the Euler step x+ = x + h sigma(T x + b) has Jacobian I + h D T.
All functions are differentiable in the kernel (the regularizers use them).
"""

from __future__ import annotations

import math

import torch

from contraction.convops import centre_mask, centre_taps, channel_abs_sums, check_kernel, with_centre_taps
from contraction.errors import CNodeError, norm_error

__all__ = [
    "check_slopes",
    "metzler_majorant",
    "mu_inf_bound",
    "mu_1_bound",
    "mu_2_gershgorin_bound",
    "mu_inf_weighted_bound",
    "euler_factor_inf",
    "euler_row_factors_inf",
    "euler_row_gain",
    "gradient_row_gain",
    "gradient_factor_2",
    "euler_row_terms_2",
    "step_rate_limit",
    "check_step_rate",
    "contractive_kernel",
    "STEP_NORMS",
    "CONTRACTIVE_INSET",
    "inset_rate",
    "contractive_cap",
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


def euler_row_gain(c: torch.Tensor, r: torch.Tensor | float, off: torch.Tensor, h: float,
                   dl: torch.Tensor | float, du: torch.Tensor | float) -> torch.Tensor:
    """A bound of a row of |(I + h D T) e| for |e| <= r and every slope d in [dl, du] on the row (dl >= 0): the
    diagonal's |1 + h d c| r plus the off-diagonal mass h d off (off: the row's |T| r without its diagonal term),
    convex in d, so the larger of its values at d = dl and d = du. The one home of the Euler step's row factor: the
    weight bounds take r = 1 and [a, b], the bound engine's mean-value boxes the local slope range."""
    return torch.maximum((1.0 + h * dl * c).abs() * r + h * dl * off, (1.0 + h * du * c).abs() * r + h * du * off)


def gradient_row_gain(gl: torch.Tensor, gu: torch.Tensor, r: torch.Tensor | float, off: torch.Tensor,
                      h: float) -> torch.Tensor:
    """A bound of a row of |(I - h T^T D T) e| for |e| <= r (the gradient field's Euler step): the diagonal 1 - h g
    with g = (T^T D T)_pp between gl and gu (the diagonal at the smallest and largest slopes), times r, plus the
    off-diagonal mass h off (off: the row's |T|^T D |T| r without its diagonal term)."""
    return torch.maximum((1.0 - h * gl).abs(), (1.0 - h * gu).abs()) * r + h * off


def gradient_factor_2(a: float, b: float, h: float, smin: torch.Tensor | float,
                      smax: torch.Tensor | float) -> torch.Tensor:
    """||I - h T^T D T||_2 <= max(h b s_max^2 - 1, 1 - h a s_min^2) for every diagonal D in [a, b]: T^T D T is
    symmetric with eigenvalues in [a s_min^2, b s_max^2] (s_min, s_max: T's singular range; differentiable in s_max
    when it is a tensor)."""
    smax = torch.as_tensor(smax, dtype=torch.float64) if not isinstance(smax, torch.Tensor) else smax
    return torch.maximum(h * b * smax.square() - 1.0, torch.as_tensor(1.0 - h * a * float(smin) ** 2, dtype=smax.dtype))


def euler_row_factors_inf(K: torch.Tensor, a: float, b: float, h: float,
                          eta: torch.Tensor | None = None) -> torch.Tensor:
    """Per output channel i: max_{d in {a,b}} |1 + h d c_i| + h d R_i(eta), a bound of the (eta-weighted) absolute row
    sums of I + h D T(K) on channel i's rows for every D in [a, b] (convex in d: the ends suffice). Shape [C]."""
    check_slopes(a, b)
    M = metzler_majorant(K)
    c = centre_taps(K)
    off = M - torch.diag_embed(c)  # off-diagonal parts of each channel's row
    if eta is not None:
        eta = eta.to(M.dtype)
        off = off * eta[:, None] / eta[None, :]
    return euler_row_gain(c, 1.0, off.sum(1), h, a, b)


def euler_factor_inf(K: torch.Tensor, a: float, b: float, h: float, eta: torch.Tensor | None = None) -> torch.Tensor:
    """||I + h D T(K)||_{inf,eta} <= max_i max_{d in {a,b}} |1 + h d c_i| + h d R_i(eta) (convex in d: ends suffice).

    When h b |c_i| <= 1 for all i this equals 1 + h * mu bound; it holds without that condition."""
    return euler_row_factors_inf(K, a, b, h, eta).amax()


def euler_row_terms_2(K: torch.Tensor, a: float, b: float, h: float, spectral_norm: torch.Tensor | float) -> torch.Tensor:
    """Per channel i: 1 + 2 h g_i + h^2 b^2 ||T||^2 with g_i channel i's Gershgorin bound of mu_2(D T); the largest
    bounds ||I + h D T||_2^2 (see `euler_factor_2`). Shape [C]; differentiable in K (and the norm, if a tensor)."""
    check_slopes(a, b)
    M = channel_abs_sums(check_kernel(K, square=True))
    c = centre_taps(K)
    g = _worst(c, a, b) + 0.5 * b * (M.sum(1) + M.sum(0) - 2 * c.abs())
    return 1.0 + 2.0 * h * g + (h * b) ** 2 * torch.as_tensor(spectral_norm, dtype=g.dtype) ** 2


STEP_NORMS = ("inf", "2")
"""The norms in which an Euler step's weight-only factor can be targeted (`step_rate_limit`)."""


def step_rate_limit(a: float, b: float, h: float, norm: str) -> float:
    """The supremum of the rates rho that any kernel's Euler step x + h sigma(T x + b) can be certified at by the
    weight-only factor in `norm` (factor <= 1 - h rho):

    - inf: each row is at least max_d |1 + h d c| >= 1 - a / b (at c = -1 / (h b), no off-centre taps), so
      rho < a / (h b);
    - 2: 1 + 2 h a c + h^2 b^2 c^2 >= 1 - a^2 / b^2 (at c = -a / (h b^2), ||T|| >= |c|), so
      rho < (1 - sqrt(1 - a^2 / b^2)) / h."""
    check_slopes(a, b)
    if norm == "inf":
        return a / (h * b) if b > 0 else 0.0
    if norm == "2":
        return (1.0 - math.sqrt(max(0.0, 1.0 - (a / b) ** 2))) / h if b > 0 else 0.0
    raise norm_error(norm, STEP_NORMS)


CONTRACTIVE_INSET = 1e-3
"""`contractive_kernel` builds for the rate rho (1 + inset) + inset, a hair above the one asked."""


def inset_rate(rho: float, inset: float = CONTRACTIVE_INSET) -> float:
    """The rate a contractive kernel is built for: rho (1 + inset) + inset."""
    return rho * (1 + inset) + inset


def contractive_cap(a: float, b: float, h: float, rho: float, inset: float = CONTRACTIVE_INSET) -> float:
    """R_max = 1 / (h b) - r / a, r = `inset_rate(rho)`: the largest off-centre row sum of a contractive kernel."""
    return 1.0 / (h * b) - inset_rate(rho, inset) / a if a > 0 else -1.0


def check_step_rate(rho: float, a: float, b: float, T: float, steps: int, norm: str, what: str, *,
                    inset: float = 0.0) -> None:
    """Refuse, in one line naming a step count that would carry it with room (rho at most 80 % of the step's
    limit, leaving the off-centre taps room), a rate the Euler step h = T / steps cannot keep (`inset`: the rate is
    built as rho (1 + inset) + inset)."""
    h = T / steps
    limit = step_rate_limit(a, b, h, norm)
    if inset_rate(rho, inset) < limit or rho == 0:  # rate 0 (non-expansive) is kept by K = 0 at least
        return
    unit = step_rate_limit(a, b, 1.0, norm)  # the limit is unit / h
    if unit > 0:
        n = max(1, math.ceil(T * rho / unit))
        while not rho <= 0.8 * step_rate_limit(a, b, T / n, norm):
            n += 1
        hint = f"use {n} steps over T = {T:g} (--steps) or a smaller rho"
    else:
        hint = f"the slopes [{a:g}, {b:g}] give no Euler step a positive {norm}-norm rate"
    raise CNodeError(f"{what}: rate rho = {rho:g} cannot be kept by the Euler step h = {h:g} ({steps} steps over "
                     f"T = {T:g}): with slopes in [{a:g}, {b:g}] a step's certified {norm}-norm factor is at best "
                     f"1 - h rho for rho < {limit:.4g}; {hint}")


def contractive_kernel(W: torch.Tensor, a: float, b: float, h: float, rho: float, *,
                       inset: float = CONTRACTIVE_INSET) -> torch.Tensor:
    """The kernel K(W) of the contractive field: for every raw kernel W, each Euler step x + h sigma(T(K) x + b) is
    certified to shrink by `euler_factor_inf(K) <= 1 - h rho` (every slope matrix D in [a, b]).

    With r = rho (1 + inset) + inset (a hair above rho, so float32 rounding of K cannot cross 1 - h rho) and
    R_max = 1 / (h b) - r / a > 0 (i.e. rho below `step_rate_limit`): channel i's off-centre taps are W's scaled by
    min(1, R_max / R_i(W)) (absolute sum R_i <= R_max), and its centre tap is
    c_i = -(R_i + r / a) - sigmoid(W_iic) (1 / (h b) - R_i - r / a), inside [-1 / (h b), -(R_i + r / a)]. Then
    1 + h d c_i >= 0 for d <= b, and each row factor 1 + h d (c_i + R_i) <= 1 - h d r / a <= 1 - h r. Differentiable."""
    W = check_kernel(W, square=True)
    check_slopes(a, b)
    r = inset_rate(rho, inset)
    limit = 1.0 / (h * b)
    R_max = contractive_cap(a, b, h, rho, inset)
    if not R_max > 0:
        raise CNodeError(f"the contractive field's rate {rho:g} is not below the Euler step's limit "
                         f"{step_rate_limit(a, b, h, 'inf'):.4g} (h = {h:g}, slopes [{a:g}, {b:g}])")
    off = W * (1 - centre_mask(W))
    R = off.abs().sum(dim=(1, 2, 3))
    scale = R_max / torch.maximum(R, torch.full_like(R, R_max))  # min(1, R_max / R), no division by zero
    R = R * scale
    hi = -(R + r / a)
    c = hi - torch.sigmoid(centre_taps(W)) * (hi + limit)
    return with_centre_taps(off * scale[:, None, None, None], c)


def euler_factor_1(K: torch.Tensor, a: float, b: float, h: float) -> torch.Tensor:
    """||I + h D T(K)||_1 <= max_j max_{d in {a,b}} |1 + h d c_j| + h b C_j (column form; other rows' d <= b)."""
    check_slopes(a, b)
    M = channel_abs_sums(check_kernel(K, square=True))
    c = centre_taps(K)
    C = M.sum(0) - c.abs()
    return torch.maximum((1 + h * a * c).abs(), (1 + h * b * c).abs()).add(h * b * C).amax()


def euler_factor_2(K: torch.Tensor, a: float, b: float, h: float, spectral_norm: float) -> torch.Tensor:
    """||I + h D T||_2 <= min(sqrt(1 + 2 h mu2 + h^2 b^2 ||T||^2), 1 + h b ||T||) with mu2 the Gershgorin bound."""
    sq = euler_row_terms_2(K, a, b, h, spectral_norm).amax()
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
