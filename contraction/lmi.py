"""LMI certificates of the Euler step of a slope-restricted conv/dense layer (S-procedure), cvxpy + SCS.

For the field x' = A sigma(T x + b) (the paper's: A = I; the gradient field: A = -T^T), with v = T dx, w = D v
(d in [a, b]) and dx+ = dx + h A w, the step contracts by c in ||x||_P = sqrt(x^T P x) if

    M(P, L, c) = [[(1 - c^2) P - 2ab T^T L T,  h P A + (a+b) T^T L   ],
                  [h A^T P + (a+b) L T,        h^2 A^T P A - 2 L     ]]  <= 0

for some P > 0 and diagonal L >= 0, since 2 (w - a v)^T L (b v - w) >= 0 for every admissible D.
Circular padding with P = P_c (x) I, L = L_c (x) I makes M block circulant (A's blocks: -T(w)^H): the 2-D DFT
splits it into one Hermitian 2C x 2C block per frequency (conjugate frequencies are redundant), sharing P_c and L_c.

Soundness does not rest on the solver: for the returned (P, L) the smallest valid c is recomputed in float64
over *every* frequency from the Schur complement, c^2 = max_w lambda_max(P^-1/2 S(w) P^-1/2),
S = M11(c=0) - M12 M22^-1 M12^H (needs M22 < 0). The solver may see only a subset of frequencies.
cvxpy is imported inside the functions only.

Size: the solver's memory is planned before anything is built (`memory_estimate`): an interior-point solver
(Clarabel) holds a dense (d(d+1)/2)^2 block per PSD cone of side d, 24 GB for the `mini` block's 45 cones of side 128;
the first-order SCS holds the sparse constraint matrix and one eigendecomposition per cone. The default picks Clarabel
where it fits, SCS where only it fits, and refuses with one line (status `too_large`) where neither would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from contraction.certificates import CERTIFIED, NOT_CERTIFIED, BlockSpec, Certificate
from contraction.convops import check_kernel, conv_symbols

__all__ = ["StepLMI", "verify_step_factor", "solve_step_lmi", "lmi_block_certificate", "conv_blocks", "dense_blocks",
           "memory_estimate", "available_memory", "INFEASIBLE", "INACCURATE", "TOO_LARGE"]

INFEASIBLE = "infeasible"
INACCURATE = "inaccurate"
TOO_LARGE = "too_large"
MEMORY_SHARE = 0.5  # of the memory available now, the most an LMI solve may plan to use


@dataclass(frozen=True)
class StepLMI:
    """Result of an LMI solve: a metric P, multipliers L per layer, the verified factor per layer, a status."""

    status: str
    P: np.ndarray | None
    L: tuple[np.ndarray, ...]
    factors: tuple[float, ...]
    message: str
    seconds: float


def conv_blocks(K: torch.Tensor, H: int, W: int) -> np.ndarray:
    """Complex C x C symbols T(w) of a circular conv, one per frequency (conjugate duplicates removed)."""
    sym = conv_symbols(check_kernel(K, square=True).detach().to(torch.float64), H, W).numpy()
    keep = []
    for i in range(H):
        for j in range(W):
            ci, cj = (-i) % H, (-j) % W
            if (i, j) <= (ci, cj):
                keep.append(sym[i, j])
    return np.stack(keep)


def dense_blocks(T: torch.Tensor) -> np.ndarray:
    """A dense (or explicit conv) matrix as the single 'frequency' block."""
    return T.detach().to(torch.float64).numpy()[None].astype(np.complex128)


def verify_step_factor(P: np.ndarray, L: np.ndarray, blocks: np.ndarray, a: float, b: float, h: float,
                       outs: np.ndarray | None = None) -> float:
    """Smallest c with M(P, L, c) <= 0 on every block, in float64; inf when no c works (M22 not negative definite).
    `outs`: the blocks of A for the field x' = A sigma(T x + b) (None: A = I)."""
    P = 0.5 * (P + P.T)
    n = P.shape[0]
    Ld = np.diag(np.maximum(L, 0.0))
    if not np.all(np.isfinite(P)) or not np.all(np.isfinite(L)):
        return math.inf
    try:
        R = np.linalg.cholesky(P)  # P = R R^T
    except np.linalg.LinAlgError:
        return math.inf
    Rinv = np.linalg.inv(R)
    worst = -math.inf
    for j, T in enumerate(blocks):
        A = np.eye(n) if outs is None else outs[j]
        M22 = h * h * (A.conj().T @ P @ A) - 2 * Ld
        M22 = 0.5 * (M22 + M22.conj().T)
        if np.linalg.eigvalsh(M22).max() >= -1e-12 * max(1.0, np.abs(M22).max()):
            return math.inf
        TH = T.conj().T
        M11 = P - 2 * a * b * TH @ Ld @ T
        M12 = h * P @ A + (a + b) * TH @ Ld
        S = M11 - M12 @ np.linalg.inv(M22) @ M12.conj().T
        G = Rinv @ S @ Rinv.conj().T
        worst = max(worst, float(np.linalg.eigvalsh(0.5 * (G + G.conj().T)).max()))
    c2 = max(worst, 0.0)
    return math.sqrt(c2) * (1 + 1e-9) + 1e-12 * n


def _subset(index: np.ndarray, blocks: np.ndarray, limit: int) -> np.ndarray:
    """The indices of the blocks the solver sees: the largest-norm half and a grid."""
    if len(blocks) <= limit:
        return index
    norms = np.linalg.norm(blocks, ord=2, axis=(1, 2))
    top = np.argsort(-norms)[: limit // 2]
    grid = np.linspace(0, len(blocks) - 1, limit - len(top)).round().astype(int)
    return index[np.unique(np.concatenate([top, grid]))]


def spectral_floor(layers: list[np.ndarray], a: float, b: float, h: float,
                   outs: list[np.ndarray | None] | None = None) -> float:
    """A lower bound of every layer's step factor in any P-norm: the induced norm of I + h d A T (the step at the
    admissible D = d I, d in {a, b}) is at least its spectral radius, max over the frequency blocks. Bisection
    starts there instead of at 0."""
    floor = 0.0
    for i, blocks in enumerate(layers):
        eye = np.eye(blocks.shape[-1])
        out = None if outs is None else outs[i]
        AT = blocks if out is None else out @ blocks
        for d in (a, b):
            floor = max(floor, float(np.abs(np.linalg.eigvals(eye + h * d * AT)).max()))
    return floor


def _cone_sides(layers: list[np.ndarray], outs: list[np.ndarray | None] | None) -> list[int]:
    """The side of every PSD cone of the problem: 2C per real block, 4C per complex one (its real embedding)."""
    sides = []
    for i, blocks in enumerate(layers):
        out = None if outs is None else outs[i]
        for j, T in enumerate(blocks):
            real = not np.any(T.imag) and (out is None or not np.any(out[j].imag))
            sides.append((T.shape[-1] + T.shape[-2]) * (1 if real else 2))
    return sides


def memory_estimate(layers: list[np.ndarray], solver: str, outs: list[np.ndarray | None] | None = None) -> int:
    """Bytes a solve of these blocks is planned to need with `solver` (the solver's data plus cvxpy's copies).

    Clarabel: 3 dense copies of each cone's (d(d+1)/2)^2 Hessian block; SCS: the constraint matrix (each entry of a
    cone depends on at most C + n + 2 variables: P's entries and the multipliers), 8 copies of its (value, index)
    pairs through cvxpy's canonicalisation, and a d x d eigendecomposition workspace per cone. Calibrated on the
    paper block and `mini` (tests/test_contraction/test_lmi.py checks it against the peak resident memory)."""
    sides = _cone_sides(layers, outs)
    svec = [d * (d + 1) // 2 for d in sides]
    if solver == "CLARABEL":
        return int(sum(3 * 8 * v * v for v in svec)) + 2**27
    n, m = layers[0].shape[-1], max(bl.shape[-2] for bl in layers)
    return int(8 * 12 * sum(svec) * (n + m + 2) + sum(8 * 4 * d * d for d in sides)) + 2**28


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux; physical pages otherwise)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class _StepProblem:
    """The feasibility LMI of a common step factor c for several layers, built once: c enters only through the
    parameter s = 1 - c^2 (in s P, DPP-compliant), so bisection re-solves the same canonicalised problem instead of
    rebuilding it for every c. Each layer's field is x' = A sigma(T x + b) (`outs`: A's blocks, None for A = I)."""

    def __init__(self, cp, layers: list[np.ndarray], a: float, b: float, h: float,
                 outs: list[np.ndarray | None] | None = None) -> None:
        n = layers[0].shape[-1]
        self.s = cp.Parameter()
        self.P = cp.Variable((n, n), symmetric=True)
        self.ls = [cp.Variable(bl.shape[-2], nonneg=True) for bl in layers]
        P = self.P
        cons = [P >> np.eye(n)]
        for i, (blocks, l) in enumerate(zip(layers, self.ls)):
            Ld = cp.diag(l)
            m = blocks.shape[-2]
            out = None if outs is None else outs[i]
            for j, T in enumerate(blocks):
                Tr, Ti = T.real, T.imag
                THLT_re = Tr.T @ Ld @ Tr + Ti.T @ Ld @ Ti
                THLT_im = Tr.T @ Ld @ Ti - Ti.T @ Ld @ Tr
                M11r = self.s * P - 2 * a * b * THLT_re
                M11i = -2 * a * b * THLT_im
                if out is None:  # A = I
                    M12r = h * P + (a + b) * (Tr.T @ Ld)
                    M12i = -(a + b) * (Ti.T @ Ld)
                    M22r, M22i = h * h * P - 2 * Ld, np.zeros((m, m))
                    real = not np.any(Ti)
                else:  # P A, A^H P A with A = Ar + i Ai
                    Ar, Ai = out[j].real, out[j].imag
                    M12r = h * (P @ Ar) + (a + b) * (Tr.T @ Ld)
                    M12i = h * (P @ Ai) - (a + b) * (Ti.T @ Ld)
                    M22r = h * h * (Ar.T @ P @ Ar + Ai.T @ P @ Ai) - 2 * Ld
                    M22i = h * h * (Ar.T @ P @ Ai - Ai.T @ P @ Ar)
                    real = not np.any(Ti) and not np.any(Ai)
                Mr = cp.bmat([[M11r, M12r], [M12r.T, M22r]])
                if real:  # a real block (dense layers, zero and Nyquist frequencies): no complex embedding
                    cons.append(0.5 * (Mr + Mr.T) << 0)
                    continue
                Mi = cp.bmat([[M11i, M12i], [-M12i.T, M22i]])
                emb = cp.bmat([[Mr, -Mi], [Mi, Mr]])
                cons.append(0.5 * (emb + emb.T) << 0)
        self.prob = cp.Problem(cp.Minimize(0), cons)

    def solve(self, c: float, solver: str, eps: float):
        """(status, P, [L per layer], message) at step factor c; P None when infeasible or failed."""
        self.s.value = 1.0 - c * c
        kwargs = {"eps": eps, "max_iters": 20000} if solver == "SCS" else {}
        try:
            self.prob.solve(solver=solver, **kwargs)
        except Exception as exc:  # solver errors come in many types
            return "error", None, None, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        status = self.prob.status
        if self.P.value is None or status not in ("optimal", "optimal_inaccurate"):
            return status, None, None, status
        return status, np.array(self.P.value), [np.array(l.value) for l in self.ls], status


def solve_step_lmi(
    layers: list[np.ndarray],
    a: float,
    b: float,
    h: float,
    *,
    c_high: float,
    solver: str | None = None,
    tol: float = 1e-3,
    max_blocks: int = 48,
    iters: int = 10,
    eps: float = 1e-6,
    outs: list[np.ndarray | None] | None = None,
    memory: int | None = None,
) -> StepLMI:
    """Bisection on the common step factor c of several layers (one metric P, multipliers per layer), from the
    spectral floor (`spectral_floor`, probed first) up to `c_high`, on one problem built once (`_StepProblem`).

    `layers`: per layer, its complex blocks (conv_blocks / dense_blocks) of T; `outs`: per layer the blocks of A for
    the field x' = A sigma(T x + b) (None, or a None entry: A = I, the paper's field). Every candidate (P, L) is
    re-verified on all blocks; the best verified product of factors is returned. Status `certified`, `infeasible` (no c <= c_high
    found), `inaccurate` (the solver returned points that do not verify) or `too_large` (refused before building
    anything: `memory_estimate` above `memory` bytes, default MEMORY_SHARE of the memory available; `solver` None:
    Clarabel where it fits, else SCS)."""
    import cvxpy as cp

    start = time.perf_counter()
    if any(not np.all(np.isfinite(bl)) for bl in layers):
        return StepLMI(NOT_CERTIFIED, None, (), (), "non-finite weights", 0.0)
    outs = outs if outs is not None and any(o is not None for o in outs) else None
    picks = [_subset(np.arange(len(bl)), bl, max_blocks) for bl in layers]
    small = [bl[idx] for bl, idx in zip(layers, picks)]
    small_outs = None if outs is None else [None if o is None else o[idx] for o, idx in zip(outs, picks)]
    budget = int(MEMORY_SHARE * available_memory()) if memory is None else memory
    choices = [solver] if solver else [s for s in ("CLARABEL", "SCS") if s in cp.installed_solvers()]
    need = {s: memory_estimate(small, s, small_outs) for s in choices}
    fits = [s for s in choices if need[s] <= budget]
    if not fits:
        return StepLMI(TOO_LARGE, None, (), (), f"refused before solving: {len(_cone_sides(small, small_outs))} PSD "
                       f"cones would need ~{min(need.values()) / 2**30:.1f} GiB ({'/'.join(choices)}), "
                       f"{budget / 2**30:.1f} GiB allowed", 0.0)
    solver = fits[0]
    problem = _StepProblem(cp, small, a, b, h, small_outs)  # built once; each bisection step only re-solves
    lo, hi = min(spectral_floor(layers, a, b, h, outs) * (1 - 1e-9), c_high), c_high
    best: tuple[float, np.ndarray, list[np.ndarray], list[float]] | None = None
    statuses = []
    for it in range(iters):
        if hi - lo <= tol * max(hi, 1e-12):
            break
        # first probe just above the spectral floor (where the LMI's optimum often sits), then bisect
        mid = lo * (1 + 0.5 * tol) if it == 0 and 0 < lo * (1 + 0.5 * tol) < hi else 0.5 * (lo + hi)
        status, P, Ls, msg = problem.solve(mid, solver, eps)
        statuses.append(msg)
        if P is None:
            lo = mid
            continue
        factors = [verify_step_factor(P, L, bl, a, b, h, None if outs is None else outs[i])
                   for i, (L, bl) in enumerate(zip(Ls, layers))]
        total = math.prod(factors)
        if math.isfinite(total) and (best is None or total < best[0]):
            best = (total, P, Ls, factors)
        worst = max(factors)
        if math.isfinite(worst) and worst <= hi:
            hi = min(hi, max(worst, mid))
        else:
            lo = mid  # the solver's point did not verify near mid: treat as infeasible here
    seconds = time.perf_counter() - start
    if best is None:
        status = INACCURATE if any(s in ("optimal", "optimal_inaccurate") for s in statuses) else INFEASIBLE
        return StepLMI(status, None, (), (), f"no verified certificate (solver said: {sorted(set(statuses))})",
                       seconds)
    return StepLMI(CERTIFIED, best[1], tuple(best[2]), tuple(best[3]),
                   f"{solver} (planned {need[solver] / 2**30:.2f} GiB); verified in float64", seconds)


def lmi_block_certificate(spec: BlockSpec, *, solver: str | None = None, max_blocks: int = 48, tol: float = 1e-3,
                          memory: int | None = None) -> Certificate:
    """The P-norm Euler certificate of a block with circular padding (P = P_c (x) I, FFT blocks).

    The solver sees at most `max_blocks` frequency blocks in all (the largest-norm ones and a grid); the
    returned factors are verified on every block of every layer.

    Zero padding is not block circulant: `not_certified` (use circular padding or the weight bounds)."""
    if spec.solver != "euler":
        return Certificate("lmi", "2_P", NOT_CERTIFIED, None, None, f"solver {spec.solver!r}: no discrete LMI")
    unique: dict[int, torch.Tensor] = {}
    for K in spec.kernels:
        unique.setdefault(id(K), K)
    distinct = list(unique.values())
    if spec.padding != "circular":
        return Certificate("lmi", "2_P", NOT_CERTIFIED, None, None,
                           "zero padding is not block circulant: not certified by the LMI; use circular padding "
                           "or the weight bounds")
    layers = [conv_blocks(K, spec.height, spec.width) for K in distinct]
    how = f"circular padding: {len(layers[0])} DFT blocks per layer"
    outs = None
    if spec.field == "gradient":  # x' = -T^T sigma(T x + b): A(w) = -T(w)^H
        outs = [-np.conj(np.swapaxes(bl, -1, -2)) for bl in layers]
        how += "; gradient field A = -T^T"
    snorm = max(float(np.linalg.norm(bl, ord=2, axis=(1, 2)).max()) for bl in layers)
    c_high = 1.0 + spec.h * spec.b * (snorm if outs is None else snorm**2)
    per_layer = max(8, max_blocks // len(layers))  # the solver sees a subset; verification sees every block
    res = solve_step_lmi(layers, spec.a, spec.b, spec.h, c_high=c_high * 1.01, solver=solver, tol=tol,
                         max_blocks=per_layer, outs=outs, memory=memory)
    if res.status != CERTIFIED:
        return Certificate("lmi", "2_P", res.status, None, None, res.message, extra={"seconds": res.seconds})
    by_id = {id(K): f for K, f in zip(distinct, res.factors)}
    steps = tuple(by_id[id(K)] for K in spec.kernels)
    P = res.P
    return Certificate(
        method="LMI (S-procedure, P-norm Euler step)",
        norm="2_P",
        status=CERTIFIED,
        rate=None,
        factor=math.prod(steps),
        condition=f"Euler h={spec.h:g}; {how}; ||x||_P with P = P_c (x) I; slopes in [{spec.a:g}, {spec.b:g}]; "
                  f"{res.message}",
        step_factors=steps,
        extra={"P": P.tolist(), "seconds": res.seconds},
    )
