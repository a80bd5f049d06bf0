"""Certificates of a whole ODE block as run: the continuous rate and the discrete solver's Lipschitz factor.

Every result carries a status: `certified` means `factor` (and `rate`, when given) are proven bounds for the
block as integrated; `not_certified` means no sound bound is available and the numbers are None.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from contraction.convops import (apply_conv, apply_conv_adjoint, centre_taps, channel_abs_sums, conv_singular_range,
                                 conv_spectral_norm)
from contraction.adaptive import PAIRS
from contraction.runge_kutta import TABLEAUS, step_factor
from contraction.errors import CNodeError, norm_error
from contraction.weights import (
    check_slopes,
    euler_factor_1,
    euler_factor_2,
    euler_factor_inf,
    euler_perron_weights,
    gradient_factor_2,
    gradient_row_gain,
    mu_1_bound,
    mu_2_gershgorin_bound,
    mu_inf_bound,
    mu_inf_weighted_bound,
    perron_weights,
    step_rate_limit,
)

__all__ = ["Certificate", "BlockSpec", "block_certificates", "verdict", "gradient_step_factors",
           "CERTIFICATE_NORMS", "FIELDS", "CERTIFIED", "NOT_CERTIFIED"]

CERTIFIED = "certified"
NOT_CERTIFIED = "not_certified"
CERTIFICATE_NORMS = ("inf", "inf_weighted", "1", "2", "2_P")
FIELDS = ("paper", "gradient", "contractive")
"""The block's vector field: 'paper' x' = sigma(K*x + b), 'gradient' x' = -K^T sigma(K*x + b), 'contractive' the
paper's field with its kernel mapped so that each Euler step contracts in Linf (its certificates are the paper's
field's, read from the kernel as run)."""


@dataclass(frozen=True)
class Certificate:
    """A bound on the block: ||x_N - y_N|| <= factor ||x_0 - y_0|| in `norm`; mu(J) <= -rate in continuous time."""

    method: str
    norm: str
    status: str
    rate: float | None
    factor: float | None
    condition: str
    step_factors: tuple[float, ...] = ()
    weights: tuple[float, ...] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def certified(self) -> bool:
        return self.status == CERTIFIED

    @property
    def contracting(self) -> bool:
        """True when the certified discrete factor is below 1."""
        return self.certified and self.factor is not None and self.factor < 1.0

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "norm": self.norm,
            "status": self.status,
            "rate": self.rate,
            "factor": self.factor,
            "condition": self.condition,
            "step_factors": list(self.step_factors),
            "weights": list(self.weights) if self.weights is not None else None,
            **self.extra,
        }


@dataclass(frozen=True)
class BlockSpec:
    """What a certificate needs of an ODE block: the kernel of each step, slopes, solver, step, padding, image size."""

    kernels: tuple[torch.Tensor, ...]
    a: float
    b: float
    h: float
    solver: str
    padding: str
    height: int
    width: int
    field: str = "paper"

    def __post_init__(self) -> None:
        check_slopes(self.a, self.b)
        if self.field not in FIELDS:
            raise CNodeError(f"field must be one of {list(FIELDS)}, got {self.field!r}")
        if not self.kernels:
            raise CNodeError("a block needs at least one kernel")
        if not (math.isfinite(self.h) and self.h > 0):
            raise CNodeError(f"step size must be positive, got {self.h}")
        for K in self.kernels:
            if not bool(torch.isfinite(K).all()):
                raise CNodeError("block has non-finite weights: nothing can be certified")

    @property
    def steps(self) -> int:
        return len(self.kernels)


def _euler(spec: BlockSpec, norm: str) -> Certificate:
    Ks = [K.detach().to(torch.float64) for K in spec.kernels]
    a, b, h = spec.a, spec.b, spec.h
    weights = None
    if norm == "inf":
        mus = [float(mu_inf_bound(K, a, b)) for K in Ks]
        steps = [float(euler_factor_inf(K, a, b, h)) for K in Ks]
        method = "mu_inf row sums"
    elif norm == "inf_weighted":
        eta = euler_perron_weights(Ks, a, b, h)
        eta_c = perron_weights(Ks)
        mus = [float(mu_inf_weighted_bound(K, a, b, eta_c)) for K in Ks]
        steps = [float(euler_factor_inf(K, a, b, h, eta)) for K in Ks]
        plain = [float(euler_factor_inf(K, a, b, h)) for K in Ks]
        if math.prod(plain) < math.prod(steps):  # the iterated weights can end a hair above uniform ones
            eta, steps = torch.ones_like(eta), plain
        weights = tuple(float(e) for e in eta / eta.min())
        method = "optimal channel-weighted mu_inf (Perron)"
    elif norm == "1":
        mus = [float(mu_1_bound(K, a, b)) for K in Ks]
        steps = [float(euler_factor_1(K, a, b, h)) for K in Ks]
        method = "mu_1 column sums"
    elif norm == "2":
        mus = [float(mu_2_gershgorin_bound(K, a, b)) for K in Ks]
        steps = []
        for K in Ks:
            snorm = conv_spectral_norm(K, spec.height, spec.width, spec.padding)
            steps.append(float(euler_factor_2(K, a, b, h, snorm)))
        method = "Gershgorin mu_2 + FFT spectral norm"
    else:
        raise norm_error(norm, ("inf", "inf_weighted", "1", "2"))
    hbc = max(float(h * b * centre_taps(K).abs().max()) for K in Ks)
    if norm in ("inf", "inf_weighted", "1"):
        cond = (f"Euler h={h:g}; h*b*max|K_iic| = {hbc:.3g} " +
                ("<= 1: factor = 1 + h*mu bound per step" if hbc <= 1 else "> 1: general |1+h d c| row form used"))
    else:
        cond = f"Euler h={h:g}; ||I+hJ||^2 <= 1 + 2h mu2 + h^2 b^2 ||T||^2 ({spec.padding} padding, torus FFT norm)"
    factor = math.prod(steps)
    return Certificate(
        method=method,
        norm=norm,
        status=CERTIFIED,
        rate=-max(mus),
        factor=factor,
        condition=cond + f"; slopes in [{a:g}, {b:g}]; {spec.steps} steps",
        step_factors=tuple(steps),
        weights=weights,
        extra={"h_b_max_centre": hbc, "h": h,
               "step_rate_limit": step_rate_limit(a, b, h, "2" if norm == "2" else "inf")},
    )


def gradient_step_factors(K: torch.Tensor, a: float, b: float, h: float, H: int, W: int,
                          padding: str) -> dict[str, float]:
    """Bounds for one Euler step I - h T^T D T of the gradient field (D diagonal in [a, b], T = T(K) square):

    - L2 (exact spectrum): T^T D T is symmetric with a T^T T <= T^T D T <= b T^T T, so its eigenvalues lie in
      [a s_min^2, b s_max^2] and ||I - h T^T D T||_2 <= max(h b s_max^2 - 1, 1 - h a s_min^2); the field's mu_2 is
      at most -a s_min^2 (rate a s_min^2; s_min exact by the DFT for circular padding, 0 for zero padding);
    - Linf (= L1, the matrix is symmetric): row p has diagonal 1 - h g_p with g_p = sum_q d_q T_qp^2 in
      [a n_p, b n_p] (n_p the squared column norm) and off-diagonal mass <= h b ((|T|^T |T| 1)_p - n_p)."""
    K = K.detach().to(torch.float64)
    smin, smax = conv_singular_range(K, H, W, padding)
    ones = torch.ones(1, K.shape[1], H, W, dtype=K.dtype)
    n = apply_conv_adjoint(torch.ones(1, K.shape[0], H, W, dtype=K.dtype), K.square(), padding)[0]
    mass = apply_conv_adjoint(apply_conv(ones, K.abs(), padding), K.abs(), padding)[0]
    off = b * (mass - n).clamp_min(0.0)
    inf = gradient_row_gain(a * n, b * n, 1.0, off, h).amax()
    mu_inf = (-a * n + off).amax()
    return {"2": float(gradient_factor_2(a, b, h, smin, smax)), "rate_2": a * smin**2, "inf": float(inf),
            "mu_inf": float(mu_inf), "s_min": smin, "s_max": smax}


def _gradient(spec: BlockSpec, norm: str) -> Certificate:
    if norm == "inf_weighted":
        return Certificate("channel-weighted mu_inf", norm, NOT_CERTIFIED, None, None,
                           "not implemented for the gradient field (its L2 certificate is exact)")
    a, b, h = spec.a, spec.b, spec.h
    per = [gradient_step_factors(K, a, b, h, spec.height, spec.width, spec.padding) for K in spec.kernels]
    steps = tuple(p["2" if norm == "2" else "inf"] for p in per)
    rate = min(p["rate_2"] for p in per) if norm == "2" else -max(p["mu_inf"] for p in per)
    hbs = max(h * b * p["s_max"] ** 2 for p in per)
    if norm == "2":
        how = ("DFT spectrum of T (exact, circular padding)" if spec.padding == "circular" else
               "torus bound of ||T||_2 (zero padding; s_min taken as 0)")
        method, cond = "gradient flow: spectral", f"||I - h T^T D T||_2 <= max(h b s_max^2 - 1, 1 - h a s_min^2); {how}"
    else:
        method, cond = f"gradient flow: mu_{'inf' if norm == 'inf' else '1'} row sums", \
            "row sums of I - h T^T D T (symmetric: the same in the 1-norm)"
    return Certificate(method=method, norm=norm, status=CERTIFIED, rate=rate, factor=math.prod(steps),
                       condition=f"gradient field, Euler h={h:g}; max h*b*||T||^2 = {hbs:.4g}; {cond}; slopes in "
                                 f"[{a:g}, {b:g}]; {spec.steps} steps",
                       step_factors=steps, extra={"s_min": min(p["s_min"] for p in per),
                                                  "s_max": max(p["s_max"] for p in per)})


def verdict(cert: Certificate) -> str:
    """One line on what the certificate says of the network as run: contracting, non-expansive or not, and why a
    contracting flow (rate > 0) can still expand as run (the Euler step overshoots)."""
    if not cert.certified or cert.factor is None:
        return f"{cert.norm}: no certified bound ({cert.condition})"
    steps = cert.step_factors
    worst = max(steps) if steps else cert.factor
    if cert.factor < 1.0 and worst < 1.0:
        return (f"{cert.norm}: the network as run contracts: every solver step shrinks distances by a factor <= "
                f"{worst:.4g}, the block by {cert.factor:.4g}")
    if cert.factor < 1.0:
        return (f"{cert.norm}: the network as run contracts: the block shrinks distances by a factor <= "
                f"{cert.factor:.4g} (its worst step alone may expand by up to {worst:.4g})")
    if cert.factor == 1.0:
        return f"{cert.norm}: the network as run is non-expansive (block factor 1)"
    line = f"{cert.norm}: the network as run does not contract (block factor {cert.factor:.4g}, worst step {worst:.4g})"
    if cert.rate is not None and cert.rate > 0:
        line += f", although the continuous flow contracts at rate {cert.rate:.4g}"
        hbc = cert.extra.get("h_b_max_centre")
        if hbc is not None and hbc > 1:
            line += (f": h b max|c_i| = {hbc:.3g} > 1, each step overshoots along its centre taps; this step size "
                     f"keeps at most a rate below {cert.extra['step_rate_limit']:.3g}")
    euler = cert.extra.get("euler_step_factors")
    if euler:  # a Runge-Kutta step's factor through the Euler factor: say which condition fails
        worst_euler, hl = max(euler), cert.extra.get("max_h_L", float("nan"))
        if worst_euler >= 1:
            line += (f"; its Euler factor E(h) is {worst_euler:.4g} >= 1: the step needs E(h) < 1 (a contracting Euler "
                     "step) first")
        else:
            line += (f"; its Euler factor E(h) is {worst_euler:.4g} < 1 but h L = {hl:.3g} adds its (h L)^2 terms: a "
                     "smaller step (more steps) or an SSP solver (heun2, ssprk3: contracting whenever E(h) < 1)")
    return line


def _field_lipschitz(spec: BlockSpec, K: torch.Tensor, norm: str, weights: tuple[float, ...] | None) -> float:
    """L >= sup_D ||J_f|| in `norm` for the block's field at kernel K (D diagonal in [a, b]): the paper's field
    J_f = D T (b times T's norm: absolute row sums, column sums, channel-weighted row sums, the spectral norm); the
    gradient field J_f = -T^T D T (b ||T||_2^2; the row sums of |T|^T |T|, symmetric)."""
    K = K.detach().to(torch.float64)
    b = spec.b
    if spec.field == "gradient":
        if norm == "2":
            return b * conv_spectral_norm(K, spec.height, spec.width, spec.padding) ** 2
        ones = torch.ones(1, K.shape[1], spec.height, spec.width, dtype=K.dtype)
        return b * float(apply_conv_adjoint(apply_conv(ones, K.abs(), spec.padding), K.abs(), spec.padding).amax())
    A = channel_abs_sums(K)  # >= every pixel's row (column) mass of T per channel pair
    if norm == "2":
        return b * conv_spectral_norm(K, spec.height, spec.width, spec.padding)
    if norm == "1":
        return b * float(A.sum(0).amax())
    if norm == "inf_weighted" and weights is not None:
        eta = torch.tensor(weights, dtype=A.dtype)
        return b * float((A * eta[:, None] / eta[None, :]).sum(1).amax())  # the weighted norm of euler_factor_inf
    return b * float(A.sum(1).amax())


def _as_solver(spec: BlockSpec, euler: Certificate) -> Certificate:
    """The Runge-Kutta step's certificate from the Euler step's (contraction.runge_kutta): each step's factor from
    the Euler factor E(h) of its kernel and the field's L."""
    if not euler.certified:
        return euler
    tableau = TABLEAUS[spec.solver]
    steps, terms = [], []
    for K, e in zip(spec.kernels, euler.step_factors):
        lip = _field_lipschitz(spec, K, euler.norm, euler.weights)
        steps.append(step_factor(spec.solver, spec.h, e, lip))
        terms.append(spec.h * lip)
    how = ("min of E(h) + h L sum b_i e_i and the Shu-Osher combination of Euler factors" if tableau.shu_osher
           else "E(h) + h L sum b_i e_i")
    runner = "as torchdiffeq runs it" if tableau.torchdiffeq else "as nodes.block runs it"
    return dataclasses.replace(
        euler, method=f"{spec.solver} from {euler.method}", factor=math.prod(steps), step_factors=tuple(steps),
        condition=f"{spec.solver} step ({tableau.stages} stages, {runner}) bounded through the Euler "
                  f"factor E(h) and L >= ||J_f|| (max h L = {max(terms):.3g}): {how}; Euler: {euler.condition}",
        extra={**euler.extra, "euler_step_factors": list(euler.step_factors), "max_h_L": max(terms)})


def block_certificates(spec: BlockSpec, norms: Sequence[str] = ("inf", "inf_weighted", "1", "2")) -> list[Certificate]:
    """Weight-only certificates of the block in each norm, for the solver actually run.

    Euler: the per-step factors are proven bounds of ||I + h D T_k|| for every admissible D, their product
    bounds the block. The fixed-step Runge-Kutta solvers (midpoint, heun2, heun3, ssprk3, rk4): each step's factor bounded
    through the Euler factor (contraction.runge_kutta). Adaptive solvers: `not_certified` (the steps depend on the
    input)."""
    if spec.solver not in TABLEAUS:
        return [
            Certificate(
                method="weights",
                norm=n,
                status=NOT_CERTIFIED,
                rate=None,
                factor=None,
                condition=f"solver {spec.solver!r}: adaptive steps chosen per input, no weight-only bound of the "
                          f"block; a fixed-step solver ({', '.join(TABLEAUS)}) is certified here, and "
                          + ("this controlled solver by `cnode certify` along each input's schedule"
                             if spec.solver in PAIRS else
                             f"a controlled one ({', '.join(PAIRS)}) by `cnode certify` along each input's schedule"),
            )
            for n in norms
        ]
    with torch.no_grad():
        certs = [(_gradient if spec.field == "gradient" else _euler)(spec, n) for n in norms]
        return certs if spec.solver == "euler" else [_as_solver(spec, c) for c in certs]
