"""Explicit Runge-Kutta steps as the block runs them, and their weight-only Lipschitz factors (docs/METHOD.md section 14).

One step of size h of x' = f(x) with the tableau (A, b): stages Y_i = x + h sum_{j<i} a_ij f(Y_j), then
x+ = x + h sum_i b_i f(Y_i). For the field f(x) = G sigma(T x + c) (G = I, or -T^T for the gradient field), every
Jacobian of f is G D T with D diagonal in [a, b] (the activation's slopes), so the step's Jacobian is
J = I + h sum_i b_i G D_i T G_i with G_i = dY_i/dx = I + h sum_{j<i} a_ij G D_j T G_j. Every tableau has
sum b_i = 1, so J = sum_i b_i (I + h G D_i T) + h sum_i b_i G D_i T (G_i - I) and, in any induced norm,

    ||J|| <= (sum_i |b_i|) E(h) + h L sum_i |b_i| e_i,   e_1 = 0,  e_i = h L sum_{j<i} |a_ij| (1 + e_j)  (>= ||G_i - I||),

with E(h) the Euler step's weight-only factor sup_D ||I + h G D T|| and L >= sup_D ||G D T||: for b >= 0 (every
fixed-step tableau here) the Euler factor plus a term of order (h L)^2 (`rk_step_factor`); Dormand and Prince's b
has a negative weight (sum |b_i| = 1.64, so its factor exceeds 1 even where the Euler step contracts).

Shu-Osher form (`Tableau.shu_osher`): v_0 = x, v_m = sum_{k<m} alpha_mk v_k + h beta_mk f(v_k) with sum_k alpha_mk = 1,
v_1..v_{s-1} the stage inputs Y_2..Y_s and v_s = x+. Where alpha_mk > 0 the term is alpha_mk times an Euler step of size
h beta_mk / alpha_mk; SSP methods (Heun's 'heun2', Shu and Osher's 'ssprk3') are convex combinations of Euler steps
of size h, so their factor is the same combination of E(h): R_0 = 1, R_m = sum_k alpha_mk E(h beta_mk/alpha_mk) R_k
(+ h |beta_mk| L R_k where alpha_mk = 0), contractive whenever the Euler step is (Heun: (1 + E^2) / 2;
`shu_osher_factor`). The smaller bound is taken. By the mean-value inequality a bound on ||J|| at every state is a
Lipschitz factor of the step in that norm. The bound engine (certify.bounds.layers.RKStep) applies the same two
decompositions elementwise with the local slopes of each stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contraction.errors import CNodeError

__all__ = ["Tableau", "TABLEAUS", "FIXED_STEP", "DOPRI5", "BOSH3", "stage_factors", "rk_step_factor", "shu_osher_factor", "step_factor",
           "combine", "tableau_step"]

Row = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta tableau: `a[i]` the weights of stage i on the earlier stages (a[0] is empty),
    `b` the weights of the update; `shu_osher` (optional): rows m = 1..s of (alpha_mk, beta_mk), k < m (module
    docstring), the same step written as combinations of Euler steps; `torchdiffeq`: whether torchdiffeq runs it
    (else nodes.block runs it from this tableau); `error` (optional): an embedded pair's error weights b_i - b^_i
    (summing to 0): h sum_i error_i k_i is the adaptive solver's error estimate."""

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    shu_osher: tuple[Row, ...] | None = None
    torchdiffeq: bool = True
    error: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.a) != len(self.b) or any(len(row) != i for i, row in enumerate(self.a)):
            raise CNodeError(f"tableau {self.name!r}: a must be strictly lower triangular with one row per b")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise CNodeError(f"tableau {self.name!r}: the weights b must sum to 1")
        if self.error is not None and (len(self.error) != len(self.b) or abs(sum(self.error)) > 1e-12):
            raise CNodeError(f"tableau {self.name!r}: the error weights need one per stage, summing to 0")
        so = self.shu_osher
        if so is not None and (len(so) != self.stages or any(len(row) != m + 1 for m, row in enumerate(so))
                               or any(abs(sum(al for al, _ in row) - 1.0) > 1e-12 or any(al < 0 for al, _ in row)
                                      for row in so)):
            raise CNodeError(f"tableau {self.name!r}: Shu-Osher rows need alpha >= 0 summing to 1, row m on v_0..v_{{m-1}}")

    @property
    def stages(self) -> int:
        return len(self.b)

    def update(self) -> "Tableau":
        """The step without the trailing stages its update does not use (Dormand and Prince's seventh, evaluated
        for the error estimate only), without error weights."""
        s = max(i for i, w in enumerate(self.b) if w) + 1
        return Tableau(self.name, self.a[:s], self.b[:s], self.shu_osher if s == self.stages else None,
                       self.torchdiffeq)

    @property
    def single_source(self) -> tuple[float | None, ...]:
        """a_i1 for the stages whose input is x + h a_i1 f(x) alone (an Euler step of size h a_i1, a_i1 > 0); else None."""
        return tuple(row[0] if row and row[0] > 0 and not any(row[1:]) else None for row in self.a)


TABLEAUS: dict[str, Tableau] = {t.name: t for t in (
    Tableau("euler", ((),), (1.0,)),
    Tableau("midpoint", ((), (0.5,)), (0.0, 1.0)),
    Tableau("heun2", ((), (1.0,)), (0.5, 0.5), shu_osher=(((1.0, 1.0),), ((0.5, 0.0), (0.5, 0.5)))),
    Tableau("heun3", ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    # Shu and Osher's SSP-RK3: x+ = x/3 + 2/3 E_h(3x/4 + E_h(E_h(x))/4); torchdiffeq has no such solver
    Tableau("ssprk3", ((), (1.0,), (0.25, 0.25)), (1 / 6, 1 / 6, 2 / 3), torchdiffeq=False,
            shu_osher=(((1.0, 1.0),), ((0.75, 0.0), (0.25, 0.25)), ((1 / 3, 0.0), (0.0, 0.0), (2 / 3, 2 / 3)))),
    # torchdiffeq's 'rk4' runs the 3/8 rule (rk4_alt_step_func), not the classic tableau
    Tableau("rk4", ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (0.125, 0.375, 0.375, 0.125)),
)}
"""The fixed-step solvers a ConvNODE block runs, with the tableaus they use."""

FIXED_STEP = tuple(TABLEAUS)

DOPRI5 = Tableau(
    "dopri5",
    ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
     (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
     (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
     (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    torchdiffeq=False,
    error=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40))
"""Dormand and Prince's 5(4) pair (torchdiffeq's dopri5 tableau): seven stages, the seventh (FSAL) at the updated
state; b the fifth-order update, `error` = b - b^ with b^ the embedded fourth-order one (contraction.adaptive runs
it with dyadic steps). Its stage weights are large and of both signs (|a_5j| sum to 24.6 where they sum to 8/9)."""

BOSH3 = Tableau(
    "bosh3",
    ((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    (2 / 9, 1 / 3, 4 / 9, 0.0),
    torchdiffeq=False,
    error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8))
"""Bogacki and Shampine's 3(2) pair (torchdiffeq's bosh3 tableau): four stages (the fourth, FSAL, at the updated
state), every weight in [0, 1]; `error` = b - b^ with b^ the embedded second-order one."""


def stage_factors(tableau: Tableau, h: Any, lip: Any) -> list[Any]:
    """e_i >= ||dY_i/dx - I|| (module docstring; floats or tensors): e_1 = 0, e_i = h L sum_j |a_ij| (1 + e_j)."""
    e: list[Any] = []
    for row in tableau.a:
        e.append(h * lip * sum(abs(w) * (1.0 + e[j]) for j, w in enumerate(row)))
    return e


def rk_step_factor(tableau: Tableau, h: Any, euler: Any, lip: Any) -> Any:
    """(sum |b_i|) E(h) + h L sum_i |b_i| e_i (module docstring): `euler` = E(h), the Euler step's factor at step h in
    the norm; `lip` = L, a bound of ||G D T|| over the slopes in the same norm (floats or tensors)."""
    if float(h) <= 0 or float(lip) < 0 or float(euler) < 0:
        raise CNodeError(f"need h > 0, L >= 0 and E >= 0, got h={float(h)}, L={float(lip)}, E={float(euler)}")
    e = stage_factors(tableau, h, lip)
    mass = sum(abs(w) for w in tableau.b)
    return (euler if mass == 1.0 else mass * euler) + h * lip * sum(abs(w) * ei for w, ei in zip(tableau.b, e))


def shu_osher_factor(tableau: Tableau, euler: Any, lip: Any = None, h: Any = None) -> Any:
    """R_s of the Shu-Osher form with E(h) for every Euler term (their steps h beta/alpha must be h or 0: E(0) = 1)
    and h |beta| L for a field term without an Euler step (needs `lip` and `h`); None without a Shu-Osher form."""
    if tableau.shu_osher is None:
        return None
    R: list[Any] = [1.0]
    for row in tableau.shu_osher:
        total: Any = 0.0
        for k, (alpha, beta) in enumerate(row):
            if alpha > 0:
                ratio = beta / alpha
                if ratio not in (0.0, 1.0):
                    return None
                total = total + alpha * (euler if ratio == 1.0 else 1.0) * R[k]
            elif beta != 0:
                if lip is None or h is None:
                    return None
                total = total + h * abs(beta) * lip * R[k]
        R.append(total)
    return R[-1]


def step_factor(solver: str | Tableau, h: Any, euler: Any, lip: Any) -> Any:
    """The smallest proven Lipschitz factor of one step of `solver` (see the module docstring)."""
    if isinstance(solver, str) and solver not in TABLEAUS:
        raise CNodeError(f"no weight-only factor for solver {solver!r}; fixed-step solvers: {list(TABLEAUS)}")
    tableau = TABLEAUS[solver] if isinstance(solver, str) else solver
    best = rk_step_factor(tableau, h, euler, lip)
    so = shu_osher_factor(tableau, euler, lip, h)
    if so is not None and float(so) < float(best):
        best = so
    return best


def combine(x: Any, h: Any, weights: tuple[float, ...], ks: list[Any]) -> Any:
    """x + h sum_j w_j k_j over the nonzero weights (the stage inputs and the update of `tableau_step`)."""
    y = x
    for w, k in zip(weights, ks):
        if w:
            y = y + (h * w) * k
    return y


def tableau_step(f: Any, x: Any, h: Any, tableau: Tableau) -> Any:
    """One step of size h of x' = f(x): x + h sum_i b_i f(Y_i), Y_i = x + h sum_{j<i} a_ij f(Y_j), in x's arithmetic
    (the block runs the solvers torchdiffeq lacks with it; the bound engine's exact twin of every tableau)."""
    ks: list[Any] = []
    for row in tableau.a:
        ks.append(f(combine(x, h, row, ks)))
    return combine(x, h, tableau.b, ks)
